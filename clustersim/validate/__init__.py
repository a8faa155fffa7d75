"""Real torch kernels timed on the local device (CUDA when present, else the CPU), calibration
profiles fitted to them, and predicted-vs-measured error reports.

``calibrate`` and ``validate`` (in ``commands``) are what the CLI wraps. Importing this package
does not import torch: the modules that time kernels (``kernels``, ``runner``, ``local_device``,
``collectives``) import it, and only ``calibrate``/``validate`` import those, when they run.

Modules: ``cases`` (the suite as data and the held-out split), ``timing`` (clocks, repeats,
spread), ``kernels`` (torch ops on rotating random buffers), ``runner`` (rounds over cases,
launch overhead, STREAM-like bandwidth, host copies), ``collectives`` (NCCL all-reduce),
``local_device`` (what this device is and which clustersim model predicts it), ``fitting``
(efficiency models by least squares), ``report`` (errors, parity plot), ``commands``.
"""

from clustersim.validate.commands import calibrate, validate
from clustersim.validate.report import ValidationReport, describe_profile

__all__ = ["calibrate", "validate", "ValidationReport", "describe_profile"]
