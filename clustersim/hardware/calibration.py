"""The hook through which a calibration profile changes a device's timings.

A device predicts ``launch_overhead_s + ideal_time_s(op) / efficiency(op)``, where the ideal time
is its roofline (with wave quantisation on a GPU) and the efficiency is the achieved fraction of
that roofline. Uncalibrated, the efficiency comes from the device's own parameters; with a
profile loaded, from the profile's fitted model for the op's kind. ``validate`` writes profiles;
this module only fixes the interface, so that ``hardware`` never imports torch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from clustersim.ops import Op


@runtime_checkable
class EfficiencyModel(Protocol):
    """Fraction (0, 1] of a device's ideal time achieved by ``op``; None when it has no opinion
    (an op kind the profile did not measure), in which case the device uses its parameters."""

    device_name: str

    def efficiency(self, op: Op) -> float | None: ...
