"""The C allocator's handling of large temporary arrays (a process-wide performance setting).

A fabric of 4096 hosts works on arrays of 10^5-10^6 elements (1-2 MB each: per link, per
incidence) that numpy allocates and frees at every coflow. glibc's malloc serves such blocks
with ``mmap`` and returns freed heap tops to the system (its default thresholds adapt only up
to the largest block freed so far), so every step touches fresh pages: at 2048 hosts an ECMP
all-to-all took 2.3 million page faults and a third of its time in the kernel (21.7 s, of
which 7.0 s system; 15.6 s without the faults). ``keep_large_blocks`` raises the thresholds
once per process so that these blocks come from the heap and stay mapped: up to
``TRIM_THRESHOLD_BYTES`` of freed memory is kept for reuse instead of being returned.

Only glibc has ``mallopt``; elsewhere (musl, macOS, Windows) this does nothing. Setting
``CLUSTERSIM_KEEP_MALLOC=0`` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 * 2**20    # glibc's largest dynamic threshold (64-bit)
TRIM_THRESHOLD_BYTES = 256 * 2**20
TOP_PAD_BYTES = 16 * 2**20

_result: bool | None = None       # once per process


def keep_large_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True when they were set."""
    global _result
    if _result is None:
        _result = _set_thresholds()
    return _result


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("CLUSTERSIM_KEEP_MALLOC") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False                    # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    ok &= mallopt(_M_TOP_PAD, TOP_PAD_BYTES) == 1
    return bool(ok)
