"""The workload registry: YAML ``workload: {kind: ...}`` -> a validated pydantic model that runs.

Each workload kind is a pydantic model registered under its ``kind`` string (like vidur's
registries). Extension point: subclass ``Workload``, declare ``kind: Literal["..."]`` and pass
``kind="..."`` in the class statement, implement ``run``. A duplicate kind is an error at
import; an unknown kind in a YAML file is an error that lists the registered kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from clustersim.hardware.cluster import Cluster
from clustersim.sim.trace import Trace


@dataclass
class RunResult:
    """What one run yields: a row of metrics, its trace (when recorded) and named plots.

    ``plots`` maps a file stem to a function that draws into a given path (PNG); ``tables``
    maps a file stem to a per-item table saved as CSV beside the trace (e.g. one row per
    request), so that analyses can read it without re-simulating.
    """

    metrics: dict[str, Any]
    trace: Trace | None = None
    plots: dict[str, Callable[[str], None]] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)


class Workload(BaseModel):
    """Base of all workload kinds. Fields are the YAML keys under ``workload:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    registry: ClassVar[dict[str, type["Workload"]]] = {}

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is None:
            return
        if kind in Workload.registry:
            raise TypeError(f"workload kind {kind!r} is registered twice "
                            f"({Workload.registry[kind].__qualname__} and {cls.__qualname__})")
        Workload.registry[kind] = cls

    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        """Simulate this workload on ``cluster``; randomness only from ``rng``."""
        raise NotImplementedError

    def check(self, cluster: Cluster) -> None:
        """Raise ``ConfigError`` for layouts that cannot run on ``cluster``, before any run."""


def workload_class(kind: str) -> type[Workload]:
    from clustersim.workloads import register_built_in

    if kind not in Workload.registry:
        register_built_in(kind)  # an unknown kind imports them all, to list them
    try:
        return Workload.registry[kind]
    except KeyError:
        raise KeyError(f"unknown workload kind {kind!r}; expected one of "
                       f"{sorted(Workload.registry)}") from None
