"""Whether a CPU calibration profile was made on this machine's CPU.

CPU names are coarse: virtual machines report a bare "AMD EPYC" for several generations, so a
name match alone accepted a profile from another EPYC whose timings differ by 10x (issue 12:
65.6 % -> 131.8 % mean error). The identity compares what changes kernel timings: model name,
logical cores available to the process, ISA extensions (AVX, AVX-512, AMX, FMA) and the
last-level cache, as ``validate.local_device`` records them in a profile's ``environment.cpu``.
Reads /proc/cpuinfo and lscpu (through ``hardware.cpu``), never torch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

def cpu_identity_differences(profile: Any) -> list[str]:
    """What differs between the CPU a profile was made on and this machine's CPU, among what
    changes kernel timings: model name, logical cores available, ISA extensions (AVX, AVX-512,
    AMX, FMA) and last-level cache. Empty for a GPU profile or one without CPU details.

    CPU names are coarse (virtual machines report a bare "AMD EPYC" for several generations), so
    a name match alone would accept a profile from another machine whose timings differ by 10x.
    """
    environment = getattr(profile, "environment", None) or {}
    made = environment.get("cpu") if getattr(profile, "device_kind", None) == "cpu" else None
    if not isinstance(made, Mapping):
        return []
    here = _local_cpu_identity()
    differences = []
    if str(made.get("model_name", "")).strip() != here["model_name"].strip():
        differences.append(f"CPU model {made.get('model_name')!r} vs {here['model_name']!r} here")
    if made.get("available_cores") is not None and made["available_cores"] != here["available_cores"]:
        differences.append(f"{made['available_cores']} logical cores vs {here['available_cores']} "
                           "here")
    if isinstance(made.get("flags"), list) and set(made["flags"]) != set(here["flags"]):
        only_there = sorted(set(made["flags"]) - set(here["flags"]))
        only_here = sorted(set(here["flags"]) - set(made["flags"]))
        differences.append(f"ISA flags {only_there or '-'} only there, {only_here or '-'} only here")
    llc = made.get("llc_bytes")
    if llc and here["llc_bytes"] and not math.isclose(float(llc), here["llc_bytes"], rel_tol=1e-9):
        differences.append(f"last-level cache {float(llc) / 2**20:.4g} MiB vs "
                           f"{here['llc_bytes'] / 2**20:.4g} MiB here")
    return differences


_LOCAL_CPU: dict[str, Any] = {}


def _local_cpu_identity() -> dict[str, Any]:
    """This machine's CPU identity, as ``validate.local_device`` records it in a profile."""
    if not _LOCAL_CPU:
        from clustersim.hardware.cpu import read_cpu_info

        info = read_cpu_info()
        _LOCAL_CPU.update(model_name=info.model_name, available_cores=info.available_cores,
                          flags=sorted(f for f in info.flags if f.startswith(("avx", "amx", "fma"))),
                          llc_bytes=info.llc_bytes)
    return _LOCAL_CPU
