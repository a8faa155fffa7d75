"""The device this process runs on: what it is, and the clustersim model that predicts it.

CUDA when torch sees a GPU (unless the caller asks for the CPU), else the CPU. The model is the
device that predictions are for: the CPU model of ``clustersim.hardware.cpu`` built from this
machine's figures, or the GPU preset whose name and SM count match
``torch.cuda.get_device_name`` / ``multi_processor_count`` (an ``allow_tf32`` that follows torch's
setting), or else a generic GPU built from the device's properties. Versions, clocks and thread
counts go into the profile's ``environment``. Imports torch.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

import torch

from clustersim.errors import ConfigError
from clustersim.hardware.cpu import CPU, detect_cpu, read_cpu_info
from clustersim.hardware.device import Device


@dataclass
class LocalDevice:
    """This process's device: ``kind`` cpu or cuda, its name, the model and the environment."""

    kind: str
    torch_device: torch.device
    name: str
    model_name: str                       # "cpu", a GPU preset name, or "generic-gpu"
    model: Device                         # uncalibrated
    threads: int
    cache_bytes: float                    # LLC (CPU) or L2 (GPU), for rotating buffers
    dtypes: tuple[str, ...]
    environment: dict[str, Any] = field(default_factory=dict)
    gpu_count: int = 0

    @property
    def launch_overhead_s(self) -> float:
        model = self.model
        return model.dispatch_overhead_s if isinstance(model, CPU) else model.kernel_launch_overhead_s


def _run(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _base_environment(threads: int) -> dict[str, Any]:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "threads": threads,
            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def pick_device_kind(device: str | None) -> str:
    """``device`` is None (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or re.fullmatch(r"cuda:\d+", device):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device "
                              f"(torch {torch.__version__}); use --device cpu", key="--device")
        return "cuda"
    raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}", key="--device")


def cpu_device(threads: int | None = None) -> LocalDevice:
    info = read_cpu_info()
    threads = threads or info.available_cores
    if threads <= 0:
        raise ConfigError(f"threads must be > 0, got {threads}", key="--threads")
    model = detect_cpu(threads, info=info)
    env = _base_environment(threads)
    env["cpu"] = {"model_name": info.model_name, "available_cores": info.available_cores,
                  "current_mhz": info.current_mhz, "max_mhz": info.max_mhz,
                  "llc_bytes": info.llc_bytes, "sources": dict(info.source),
                  "flags": sorted(f for f in info.flags if f.startswith(("avx", "amx", "fma")))}
    env["mkl"] = torch.backends.mkl.is_available()
    env["openmp"] = torch.backends.openmp.is_available()
    dtypes = ("fp32", "bf16")
    return LocalDevice("cpu", torch.device("cpu"), info.model_name, "cpu", model, threads,
                       info.llc_bytes or 32 * 2**20, dtypes, env)


# Rough per-SM rates by compute capability for a GPU without a preset: dense fp16/bf16
# tensor-core FLOP per clock, and fp32 CUDA-core FLOP per clock (2 x FP32 lanes). From NVIDIA's
# architecture whitepapers (Volta, Turing, Ampere GA100 and GA102, Ada, Hopper, Blackwell).
_TENSOR_FLOP_PER_CLK_SM = {(7, 0): 1024, (7, 5): 1024, (8, 0): 2048, (8, 6): 1024, (8, 7): 1024,
                           (8, 9): 1024, (9, 0): 4096, (10, 0): 8192}
_FP32_FLOP_PER_CLK_SM = {(7, 0): 128, (7, 5): 128, (8, 0): 128, (8, 6): 256, (8, 7): 256,
                         (8, 9): 256, (9, 0): 256, (10, 0): 256}


def _nvidia_smi(index: int, fields: str) -> list[str] | None:
    out = _run(["nvidia-smi", f"--id={index}", f"--query-gpu={fields}",
                "--format=csv,noheader,nounits"])
    return [v.strip() for v in out.split(",")] if out else None


def _match_preset(name: str, sms: int, memory_bytes: float) -> str | None:
    from clustersim.hardware.presets import gpu_presets

    text = re.sub(r"[^a-z0-9]", "", name.lower())
    best, best_score = None, None
    for preset, gpu in gpu_presets().items():
        chip = preset.split("-")[0].lower()
        if chip not in text:
            continue
        score = (gpu.num_sms == sms, -abs(gpu.hbm_capacity_bytes - memory_bytes))
        if best_score is None or score > best_score:
            best, best_score = preset, score
    return best


def cuda_device(device: str | None) -> LocalDevice:
    from clustersim.hardware.gpu import GPU
    from clustersim.hardware.presets import load_gpu

    index = torch.device(device if device and ":" in device else "cuda").index
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    name = torch.cuda.get_device_name(index)
    smi = _nvidia_smi(index, "driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem")
    env = _base_environment(torch.get_num_threads())
    env.update({"cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                else None,
                "compute_capability": f"{props.major}.{props.minor}",
                "sms": props.multi_processor_count, "memory_bytes": props.total_memory,
                "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "gpu_count": torch.cuda.device_count()})
    if smi and len(smi) == 5:
        env["driver"] = smi[0]
        env["clocks_mhz"] = {"sm": smi[1], "sm_max": smi[2], "memory": smi[3], "memory_max": smi[4]}
    preset = _match_preset(name, props.multi_processor_count, props.total_memory)
    allow_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    l2 = float(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    if preset is not None:
        model: GPU = load_gpu(preset, allow_tf32=allow_tf32)
        model_name = preset
    else:
        cc = (props.major, props.minor)
        clock_khz = getattr(props, "clock_rate", None)
        clock_hz = (clock_khz * 1e3 if clock_khz else
                    float(smi[2]) * 1e6 if smi and smi[2].replace(".", "").isdigit() else 1.5e9)
        near = max((k for k in _TENSOR_FLOP_PER_CLK_SM if k <= cc), default=(8, 0))
        per_sm = props.multi_processor_count * clock_hz
        bus = getattr(props, "memory_bus_width", None)
        mem_khz = getattr(props, "memory_clock_rate", None)
        bandwidth = 2 * mem_khz * 1e3 * bus / 8 if bus and mem_khz else 1e12
        model = GPU(name=name, num_sms=props.multi_processor_count, clock_hz=clock_hz,
                    tensor_flops_per_s={"bf16": per_sm * _TENSOR_FLOP_PER_CLK_SM[near],
                                        "fp16": per_sm * _TENSOR_FLOP_PER_CLK_SM[near],
                                        "tf32": per_sm * _TENSOR_FLOP_PER_CLK_SM[near] / 2},
                    vector_flops_per_s={"fp32": per_sm * _FP32_FLOP_PER_CLK_SM[near]},
                    hbm_capacity_bytes=float(props.total_memory),
                    hbm_bandwidth_bytes_per_s=bandwidth, l2_bytes=l2, allow_tf32=allow_tf32)
        model_name = "generic-gpu"
        env["generic_gpu_note"] = ("no preset matches this GPU: peak rates estimated from SM "
                                   "count x clock x per-SM rate of its compute capability")
    dtypes = (("bf16", "fp16", "fp32") if torch.cuda.is_bf16_supported() else ("fp16", "fp32"))
    return LocalDevice("cuda", torch.device("cuda", index), name, model_name, model,
                       torch.get_num_threads(), l2, dtypes, env, torch.cuda.device_count())


def local_device(device: str | None = None, threads: int | None = None) -> LocalDevice:
    kind = pick_device_kind(device)
    if kind == "cpu":
        return cpu_device(threads)
    return cuda_device(device)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
