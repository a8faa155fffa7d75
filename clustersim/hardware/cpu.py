"""A CPU running PyTorch eager ops: a roofline over its vector units and DRAM, per op dispatch.

Fidelity: analytical (closed form per op). Like the GPU, a CPU predicts

    op_time(op) = fixed_time_s(op) + ideal_time_s(op) / efficiency(op)

``ideal_time_s`` is the larger of a compute time and a memory time (``roofline(op)``):

* compute = ``op.flops * f / flops_per_s(op.dtype)``, where ``f`` is the unmasked fraction of a
  causal attention op (``clustersim.hardware.gpu.causal_fraction``) and 1 otherwise;
* memory  = ``op.bytes_total / memory_bandwidth_bytes_per_s`` (DRAM: the calibration times ops
  with rotating buffers larger than the last-level cache, so their inputs come from DRAM).

The fixed part is ``fixed_time_s(op) = dispatch_overhead_s + allocation_time_s(op)``, where
``allocation_time_s`` is the cost of an output that the allocator maps fresh from the kernel:
PyTorch allocates CPU outputs with glibc malloc, which serves blocks above its mmap threshold
(at most 32 MiB on 64-bit, ``DEFAULT_MMAP_THRESHOLD_MAX``) with a new mmap each time, whose pages
fault and are zeroed on first touch: ``op.bytes_written / fresh_page_bandwidth_bytes_per_s`` for
an output larger than ``mmap_threshold_bytes``, 0 otherwise and for MEMCPY (which copies into
memory that already exists). Measured on a 2-vCPU KVM guest: 1.2-1.8 GB/s, five times slower
than the copy that follows. Between 32 and 64 MiB the truth depends on the heap's state (malloc
serves a request from free heap memory before it maps new memory, and trims the heap only when
more than twice the threshold is free), so an output there may or may not pay, even from one
call of an op to the next: the model says it does, and the calibration suite leaves that band
out (``clustersim.validate.cases.MALLOC_BAND``).

Peak FLOP/s per dtype is ``cores * clock_hz * lanes * fma_units_per_core * 2`` (an FMA is two
FLOPs), with ``lanes = simd_bits / bits of the dtype`` for dtypes the vector units compute
natively. fp32 and fp64 are always native; bf16 needs AVX512-BF16 or AMX, fp16 AVX512-FP16,
int8 VNNI. A dtype without native arithmetic is modelled as converted to fp32 and computed at the
fp32 rate: an optimistic bound that calibration corrects (PyTorch's bf16 GEMM on an AVX2-only
CPU reaches about 1% of it).

``efficiency`` is a calibration profile's answer when one is loaded and has an opinion on the op,
else the parameter of the resource that bounds the op. ``cores`` is the number of cores the
workload uses (``torch.set_num_threads``), not necessarily all of the machine's.

``detect_cpu()`` reads this machine's figures from ``/proc/cpuinfo``, ``/proc/meminfo``,
``lscpu`` and ``os.sched_getaffinity``. DRAM bandwidth cannot be read from the OS: it defaults to
``DEFAULT_BANDWIDTH_PER_CORE_BYTES_PER_S`` per core until a calibration measures it.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Mapping

from clustersim.hardware.calibration import EfficiencyModel, check_profile_device
from clustersim.hardware.device import Device, MemoryTier
from clustersim.hardware.gpu import Roofline, causal_fraction
from clustersim.ops import DTYPE_BYTES, Op, OpKind

# A single core of a current x86 server sustains roughly 10-20 GB/s of STREAM copy bandwidth
# (latency-bound: ~10 outstanding L1 misses x 64 B / ~80 ns); 10 GB/s per core is the lower end,
# an assumption that a calibration replaces with a measurement.
DEFAULT_BANDWIDTH_PER_CORE_BYTES_PER_S = 10e9
# PyTorch eager dispatch of one CPU op (Python -> ATen -> kernel) costs a few microseconds.
DEFAULT_DISPATCH_OVERHEAD_S = 5e-6
# First touch of a fresh 4 KiB page (fault + zeroing) costs ~0.5-1 us on bare metal: ~4 GB/s.
DEFAULT_FRESH_PAGE_BANDWIDTH_BYTES_PER_S = 4e9
# glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: malloc never serves a larger block from its heap.
GLIBC_MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20

# CPU flags that give a dtype native vector arithmetic, and the lanes multiplier they bring over
# fp32 (AVX512-BF16's vdpbf16ps does two bf16 products per fp32 lane; VNNI four int8 ones).
_NATIVE_FLAGS: dict[str, tuple[tuple[str, ...], int]] = {
    "bf16": (("avx512_bf16", "amx_bf16"), 2),
    "fp16": (("avx512_fp16", "amx_fp16"), 2),
    "int8": (("avx512_vnni", "avx_vnni", "amx_int8"), 4),
}


@dataclass(frozen=True)
class CPU(Device):
    """A CPU's parameters, in SI base units. Frozen, without slots (``op_time`` caches in
    the instance ``__dict__``)."""

    name: str
    cores: int                                 # cores the workload runs on (torch threads)
    clock_hz: float                            # sustained all-core clock
    memory_capacity_bytes: float
    memory_bandwidth_bytes_per_s: float        # DRAM, STREAM-copy convention (read + write)
    simd_bits: int = 256                       # 128 SSE, 256 AVX2, 512 AVX-512
    fma_units_per_core: int = 2
    native_dtypes: tuple[str, ...] = ("fp32", "fp64")
    llc_bytes: float | None = None             # last-level cache (informational)
    dispatch_overhead_s: float = DEFAULT_DISPATCH_OVERHEAD_S
    fresh_page_bandwidth_bytes_per_s: float = DEFAULT_FRESH_PAGE_BANDWIDTH_BYTES_PER_S
    mmap_threshold_bytes: float = GLIBC_MMAP_THRESHOLD_MAX_BYTES
    # Achieved fractions of the roofline, uncalibrated: MKL/oneDNN GEMMs reach 70-90% of the
    # vector peak on large shapes; flash attention on CPU about half of that; streaming kernels
    # about 80% of STREAM bandwidth; elementwise math about half the peak (transcendentals).
    matmul_efficiency: float = 0.7
    attention_efficiency: float = 0.4
    memory_efficiency: float = 0.8
    vector_efficiency: float = 0.5
    profile: EfficiencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "native_dtypes", tuple(self.native_dtypes))
        self._validate()
        if self.profile is not None:
            check_profile_device(self.profile, self.name)

    def _validate(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"CPU {self.name!r}: {what}")

        for attr in ("cores", "simd_bits", "fma_units_per_core"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{attr} must be a positive integer, got {value!r}")
        if self.simd_bits % 64:
            fail(f"simd_bits must be a multiple of 64, got {self.simd_bits}")
        for attr in ("clock_hz", "memory_capacity_bytes", "memory_bandwidth_bytes_per_s",
                     "fresh_page_bandwidth_bytes_per_s", "mmap_threshold_bytes"):
            if not getattr(self, attr) > 0:
                fail(f"{attr} must be > 0, got {getattr(self, attr)!r}")
        if self.llc_bytes is not None and not self.llc_bytes > 0:
            fail(f"llc_bytes must be > 0 when given, got {self.llc_bytes!r}")
        if not self.dispatch_overhead_s >= 0:
            fail(f"dispatch_overhead_s must be >= 0, got {self.dispatch_overhead_s!r}")
        for attr in ("matmul_efficiency", "attention_efficiency", "memory_efficiency",
                     "vector_efficiency"):
            if not 0 < getattr(self, attr) <= 1:
                fail(f"{attr} must be in (0, 1], got {getattr(self, attr)!r}")
        unknown = [d for d in self.native_dtypes if d not in DTYPE_BYTES]
        if unknown:
            fail(f"native_dtypes has unknown dtypes {unknown}; expected some of {sorted(DTYPE_BYTES)}")

    # -- Device contract ----------------------------------------------------------------------

    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        return (MemoryTier("dram", self.memory_capacity_bytes, self.memory_bandwidth_bytes_per_s),)

    def _op_time_uncached(self, op: Op) -> float:
        return self.fixed_time_s(op) + self.ideal_time_s(op) / self.efficiency(op)

    # -- the model, public so that calibration can fit against it ----------------------------

    def fixed_time_s(self, op: Op) -> float:
        """The part of ``op_time`` that no efficiency scales: dispatch and fresh output pages.
        Calibration subtracts it from a measured time before computing an efficiency."""
        return self.dispatch_overhead_s + self.allocation_time_s(op)

    def allocation_time_s(self, op: Op) -> float:
        if op.kind is OpKind.MEMCPY or op.bytes_written <= self.mmap_threshold_bytes:
            return 0.0
        return op.bytes_written / self.fresh_page_bandwidth_bytes_per_s

    def peak_flops(self, dtype: str) -> float:
        """The Device contract's MFU denominator: the vector peak (a CPU has no matrix units)."""
        return self.flops_per_s(dtype)

    def flops_per_s(self, dtype: str) -> float:
        """Peak vector FLOP/s of all ``cores`` for ``dtype`` (see the module docstring)."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
        fp32_lanes = self.simd_bits // 32
        if dtype in ("fp32", "tf32"):
            lanes = fp32_lanes
        elif dtype == "fp64":
            lanes = self.simd_bits // 64
        elif dtype in self.native_dtypes and dtype in _NATIVE_FLAGS:
            lanes = fp32_lanes * _NATIVE_FLAGS[dtype][1]
        else:
            lanes = fp32_lanes                  # converted to fp32 (see module docstring)
        return self.cores * self.clock_hz * lanes * self.fma_units_per_core * 2

    def roofline(self, op: Op) -> Roofline:
        if op.kind.is_communication:
            raise ValueError(f"CPU {self.name!r}: {op.kind.value} op {op.name!r} is timed by the "
                             "fabric, not by a device")
        flops = op.flops
        if op.kind is OpKind.ATTENTION and op.causal and len(op.shape) == 6:
            flops *= causal_fraction(op.shape[3], op.shape[4])
        return Roofline(flops / self.flops_per_s(op.dtype),
                        op.bytes_total / self.memory_bandwidth_bytes_per_s)

    def ideal_time_s(self, op: Op) -> float:
        return self.roofline(op).ideal_s

    def efficiency(self, op: Op) -> float:
        """Achieved fraction of ``ideal_time_s(op)``: the profile's, else the bound resource's."""
        if self.profile is not None:
            fitted = self.profile.efficiency(op)
            if fitted is not None:
                if not (fitted > 0 and math.isfinite(fitted)):
                    raise ValueError(f"CPU {self.name!r}: calibration profile gave efficiency "
                                     f"{fitted!r} for {op.kind.value} op {op.name!r}")
                return float(fitted)
        if self.roofline(op).bound == "memory":
            return self.memory_efficiency
        if op.kind is OpKind.MATMUL:
            return self.matmul_efficiency
        if op.kind is OpKind.ATTENTION:
            return self.attention_efficiency
        return self.vector_efficiency

    def parameters(self) -> dict[str, object]:
        """The fields that define this model, as plain YAML-ready values (no profile)."""
        return {"name": self.name, "cores": self.cores, "clock_hz": self.clock_hz,
                "memory_capacity_bytes": self.memory_capacity_bytes,
                "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
                "simd_bits": self.simd_bits, "fma_units_per_core": self.fma_units_per_core,
                "native_dtypes": list(self.native_dtypes), "llc_bytes": self.llc_bytes,
                "dispatch_overhead_s": self.dispatch_overhead_s,
                "fresh_page_bandwidth_bytes_per_s": self.fresh_page_bandwidth_bytes_per_s,
                "mmap_threshold_bytes": self.mmap_threshold_bytes,
                "matmul_efficiency": self.matmul_efficiency,
                "attention_efficiency": self.attention_efficiency,
                "memory_efficiency": self.memory_efficiency,
                "vector_efficiency": self.vector_efficiency}


# -- detection of this machine ------------------------------------------------------------------


@dataclass(frozen=True)
class CPUInfo:
    """What the OS tells about this machine's CPU (None where it does not say)."""

    model_name: str
    available_cores: int
    flags: frozenset[str]
    current_mhz: float | None
    max_mhz: float | None
    llc_bytes: float | None
    memory_bytes: float | None
    source: Mapping[str, str]             # figure -> where it was read


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())
            if v}


_SIZE = re.compile(r"([\d.]+)\s*([KMG]i?B?)?", re.IGNORECASE)


def _cache_bytes(text: str) -> float | None:
    match = _SIZE.match(text)
    if not match:
        return None
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    return float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit]


def read_cpu_info() -> CPUInfo:
    """This machine's CPU as /proc/cpuinfo, /proc/meminfo, sysfs and lscpu describe it."""
    cpuinfo, source = _read("/proc/cpuinfo") or "", {}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    lscpu = _lscpu()
    model = fields.get("model name") or lscpu.get("Model name") or "unknown CPU"
    flags = frozenset((fields.get("flags") or lscpu.get("Flags") or "").split())
    try:
        cores = len(os.sched_getaffinity(0))
        source["available_cores"] = "os.sched_getaffinity"
    except AttributeError:
        cores = os.cpu_count() or 1
        source["available_cores"] = "os.cpu_count"
    current = float(fields["cpu MHz"]) if "cpu MHz" in fields else None
    maximum = None
    sysfs = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if sysfs and sysfs.strip().isdigit():
        maximum, source["max_mhz"] = int(sysfs) / 1e3, "sysfs cpuinfo_max_freq"
    elif "CPU max MHz" in lscpu:
        maximum, source["max_mhz"] = float(lscpu["CPU max MHz"]), "lscpu"
    if current is not None:
        source["current_mhz"] = "/proc/cpuinfo cpu MHz"
    llc = None
    for key in ("L3 cache", "L2 cache"):
        if key in lscpu:
            llc = _cache_bytes(lscpu[key])
            source["llc_bytes"] = f"lscpu {key}"
            break
    memory = None
    meminfo = _read("/proc/meminfo") or ""
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", meminfo)
    if match:
        memory, source["memory_bytes"] = int(match.group(1)) * 1024.0, "/proc/meminfo"
    return CPUInfo(model, cores, flags, current, maximum, llc, memory, source)


def simd_bits_from_flags(flags: frozenset[str]) -> int:
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    return 128


def native_dtypes_from_flags(flags: frozenset[str]) -> tuple[str, ...]:
    native = ["fp32", "fp64"]
    for dtype, (needed, _) in _NATIVE_FLAGS.items():
        if any(flag in flags for flag in needed):
            native.append(dtype)
    return tuple(native)


def detect_cpu(cores: int | None = None, *, info: CPUInfo | None = None,
               **overrides: object) -> CPU:
    """A :class:`CPU` model of this machine, using ``cores`` cores (default: all available).

    The clock is the maximum frequency where the OS reports one, else the current one (on VMs,
    which hide cpufreq, that is the nominal clock; turbo makes efficiencies above 1 possible).
    Two FMA units per core are assumed when the CPU has FMA (every AVX2 core from Haswell and
    Zen on), one otherwise. ``overrides`` replace any field (e.g. a measured
    ``memory_bandwidth_bytes_per_s``).
    """
    info = info or read_cpu_info()
    used = cores if cores is not None else info.available_cores
    if not isinstance(used, int) or isinstance(used, bool) or used <= 0:
        raise ValueError(f"cores must be a positive integer, got {used!r}")
    mhz = info.max_mhz or info.current_mhz or 2000.0
    params: dict[str, object] = dict(
        name=info.model_name, cores=used, clock_hz=mhz * 1e6,
        memory_capacity_bytes=info.memory_bytes or 8 * 2**30,
        memory_bandwidth_bytes_per_s=DEFAULT_BANDWIDTH_PER_CORE_BYTES_PER_S * used,
        simd_bits=simd_bits_from_flags(info.flags),
        fma_units_per_core=2 if "fma" in info.flags else 1,
        native_dtypes=native_dtypes_from_flags(info.flags), llc_bytes=info.llc_bytes)
    params.update(overrides)
    return CPU(**params)   # type: ignore[arg-type]


def cpu_from_parameters(parameters: Mapping[str, object], **overrides: object) -> CPU:
    """Rebuild a CPU from ``CPU.parameters()`` (as a profile stores it)."""
    known = set(CPU.__dataclass_fields__) - {"profile"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(f"unknown CPU parameters {unknown}; valid: {sorted(known)}")
    values = {**parameters, **overrides}
    if "native_dtypes" in values:
        values["native_dtypes"] = tuple(values["native_dtypes"])   # type: ignore[arg-type]
    return CPU(**values)   # type: ignore[arg-type]

