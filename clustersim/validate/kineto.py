"""Kernel timings from a PyTorch profiler (Kineto) Chrome trace recorded with ``record_shapes``.

Each GPU kernel event (``cat: kernel``) carries the ``External id`` of the CPU op that launched
it (``cat: cpu_op``), whose ``Input Dims`` and ``Input type`` give the shape and dtype. Kernel
durations are summed per op (a split-K GEMM is two kernels), and ops are mapped to clustersim
ops: ``aten::mm / addmm / bmm / baddbmm`` to matmul, pointwise ops to elementwise, softmax and
layer norm to their kinds. Other ops are counted as skipped, not errors: a trace holds many.
"""

from __future__ import annotations

import math
from typing import Any

from clustersim import ops
from clustersim.errors import ConfigError
from clustersim.ops import Op, OpKind

TORCH_DTYPES = {"c10::bfloat16": "bf16", "c10::half": "fp16", "float": "fp32", "double": "fp64",
                "c10::float8_e4m3fn": "fp8"}
POINTWISE = {"aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::gelu", "aten::silu",
             "aten::native_dropout", "aten::dropout", "aten::copy_", "aten::div", "aten::div_",
             "aten::sub", "aten::gelu_backward", "aten::silu_backward",
             "aten::native_dropout_backward", "aten::threshold_backward", "aten::relu"}
REDUCTIONS = {"aten::_softmax": OpKind.SOFTMAX, "aten::softmax": OpKind.SOFTMAX,
              "aten::_softmax_backward_data": OpKind.SOFTMAX,
              "aten::native_layer_norm": OpKind.NORM, "aten::native_layer_norm_backward": OpKind.NORM}


def _dtype(types: list) -> str | None:
    for t in types or []:
        name = TORCH_DTYPES.get(str(t).lower())
        if name:
            return name
    return None


def _numel(dims: list) -> int:
    return math.prod(int(d) for d in dims) if dims else 0


def op_of(name: str, dims: list, types: list) -> Op | None:
    """The clustersim op of one aten op with its input shapes, or None when not modelled."""
    dtype = _dtype(types)
    if dtype is None:
        return None
    tensors = [d for d in dims if isinstance(d, list) and d]
    if name == "aten::mm" and len(tensors) >= 2:
        (m, k), (_, n) = tensors[0], tensors[1]
        return ops.matmul(m, n, k, dtype=dtype)
    if name == "aten::addmm" and len(tensors) >= 3:
        (m, k), (_, n) = tensors[1], tensors[2]
        return ops.matmul(m, n, k, dtype=dtype)
    if name in ("aten::bmm", "aten::baddbmm") and len(tensors) >= 2:
        a, b = tensors[-2], tensors[-1]
        if len(a) == 3 and len(b) == 3:
            return ops.matmul(a[1], b[2], a[2], batch=a[0], dtype=dtype)
        return None
    if not tensors:
        return None
    elements = _numel(tensors[0])
    same = sum(1 for t in tensors if _numel(t) == elements)
    if name in POINTWISE:
        return ops.elementwise(elements, inputs=same, outputs=1, dtype=dtype)
    if name in REDUCTIONS:
        return ops.elementwise(elements, inputs=same, outputs=1, dtype=dtype,
                               kind=REDUCTIONS[name])
    return None


def kernel_records(trace: Any, file: str) -> list:
    from clustersim.validate.measurement_files import KernelRecord

    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        raise ConfigError("not a Kineto trace: no 'traceEvents' list", file=file)
    cpu_ops: dict[int, dict] = {}
    kernel_us: dict[int, float] = {}
    for event in events:
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        args = event.get("args") or {}
        ext = args.get("External id")
        if ext is None:
            continue
        if event.get("cat") == "cpu_op":
            cpu_ops[ext] = event
        elif event.get("cat") == "kernel":
            duration = float(event.get("dur", 0))
            if duration > 0:
                kernel_us[ext] = kernel_us.get(ext, 0.0) + duration
    if not kernel_us:
        raise ConfigError("no GPU kernel events (cat 'kernel') in the trace; profile with "
                          "activities=[ProfilerActivity.CUDA]", file=file)
    if cpu_ops and not any("Input Dims" in (e.get("args") or {}) for e in cpu_ops.values()):
        raise ConfigError("CPU ops carry no 'Input Dims'; profile with record_shapes=True",
                          file=file)
    records = []
    for ext, duration_us in kernel_us.items():
        event = cpu_ops.get(ext)
        if event is None:
            continue
        args = event["args"]
        op = op_of(event.get("name", ""), args.get("Input Dims", []), args.get("Input type", []))
        if op is not None:
            records.append(KernelRecord(op, duration_us * 1e-6, event.get("name", "")))
    return records
