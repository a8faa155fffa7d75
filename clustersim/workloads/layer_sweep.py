"""Workload ``layer_sweep``: layers as GEMMs on a systolic array, over array size x dataflow.

    workload:
      kind: layer_sweep
      layers: [vit_block, mobilenet_v1, llm_gemms]   # sets of clustersim.workloads.layer_gemms
      array_sizes: [16, 32, 64, 128, 256]            # square arrays, rows = cols
      dataflows: [os, ws, is]

Fidelity: cycle-level (SCALE-Sim's closed forms in ``hardware/systolic.py``) for the sweep;
event-level for the run itself: the device's own configuration executes every layer as a task
on the engine (its ``op_time``, DRAM-bound or compute-bound), which gives the trace and
``layers_time_s``.

For each (array size, dataflow, layer group) the sweep sums cycles and MACs over the group's
GEMMs (``count`` identical GEMMs cost ``count`` times one) and reports utilisation =
MACs / (cycles x rows x cols), SCALE-Sim's "overall utilization". Metrics (one row): the
utilisation of each group at the device's own size and dataflow, and the best and worst over
the sweep with where they occur. Plots: ``utilisation_heatmap`` (one panel per dataflow,
groups x array sizes) and ``layer_table`` (the full per-layer table as CSV beside the PNGs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.systolic import DATAFLOWS, SystolicArray
from clustersim.ops import matmul
from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program
from clustersim.workloads.layer_gemms import LAYER_SETS, LayerGemm
from clustersim.workloads.workload import RunResult, Workload


def sweep_table(device: SystolicArray, layers: list[LayerGemm], sizes: list[int],
                dataflows: list[str]) -> pd.DataFrame:
    """One row per (size, dataflow, layer): folds, cycles, MACs, utilisation."""
    rows = []
    for size in sizes:
        for flow in dataflows:
            array = dataclasses.replace(device, rows=size, cols=size, dataflow=flow)
            for layer in layers:
                mapping = array.gemm_mapping(layer.m, layer.n, layer.k)
                cycles = layer.count * mapping.cycles
                rows.append({"array": size, "dataflow": flow, "group": layer.group,
                             "layer": layer.name, "m": layer.m, "n": layer.n, "k": layer.k,
                             "count": layer.count, "folds": layer.count * mapping.folds,
                             "cycles": cycles, "macs": layer.macs,
                             "utilisation": layer.macs / (cycles * size * size)})
    return pd.DataFrame(rows)


def group_utilisation(table: pd.DataFrame) -> pd.DataFrame:
    """Utilisation per (array, dataflow, group): summed MACs over summed PE-cycles."""
    sums = table.groupby(["array", "dataflow", "group"], sort=False)[["macs", "cycles"]].sum()
    sums = sums.reset_index()
    sums["utilisation"] = sums["macs"] / (sums["cycles"] * sums["array"] ** 2)
    return sums


def plot_heatmap(groups: pd.DataFrame, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flows = list(dict.fromkeys(groups["dataflow"]))
    fig, axes = plt.subplots(1, len(flows), figsize=(4.2 * len(flows), 3.6), squeeze=False)
    for ax, flow in zip(axes[0], flows):
        grid = groups[groups["dataflow"] == flow].pivot(index="group", columns="array",
                                                         values="utilisation")
        grid = grid.reindex(list(dict.fromkeys(groups["group"])))
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
        ax.set_yticks(range(len(grid.index)),
                      list(grid.index) if ax is axes[0][0] else [""] * len(grid.index))
        ax.set_xlabel("array size (rows = cols)")
        ax.set_title(f"dataflow {flow}")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")
    fig.colorbar(image, ax=axes[0].tolist(), label="utilisation (MACs / PE-cycles)")
    fig.suptitle(title or "systolic array utilisation")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


class LayerSweep(Workload, kind="layer_sweep"):
    kind: Literal["layer_sweep"] = "layer_sweep"
    layers: list[Literal["vit_block", "mobilenet_v1", "llm_gemms"]] = Field(
        default_factory=lambda: ["vit_block", "mobilenet_v1", "llm_gemms"],
        description="layer sets to map (clustersim.workloads.layer_gemms)")
    array_sizes: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256],
                                   description="square array sizes (rows = cols) to sweep")
    dataflows: list[Literal["os", "ws", "is"]] = Field(
        default_factory=lambda: list(DATAFLOWS), description="dataflows to sweep")
    dtype: str = Field("bf16", description="operand dtype of the event-level run")

    def check(self, cluster: Cluster) -> None:
        device = cluster.devices[0]
        if not isinstance(device, SystolicArray):
            raise ConfigError(f"layer_sweep maps GEMMs onto a systolic array, but the cluster's "
                              f"device {device.name!r} is a {type(device).__name__}; use a "
                              "systolic preset (e.g. cluster.device: TPU-v3-MXU)",
                              key="cluster.device")
        if any(size < 1 for size in self.array_sizes):
            raise ConfigError(f"array sizes must be >= 1, got {self.array_sizes}",
                              key="workload.array_sizes")
        try:
            device.mac_rate(self.dtype)
        except ValueError as exc:
            raise ConfigError(str(exc), key="workload.dtype") from None

    def gemms(self) -> list[LayerGemm]:
        return [layer for name in self.layers for layer in LAYER_SETS[name]()]

    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        self.check(cluster)
        device: SystolicArray = cluster.devices[0]
        layers = self.gemms()
        table = sweep_table(device, layers, self.array_sizes, list(self.dataflows))
        groups = group_utilisation(table)
        layers_s, trace = self._run_on_engine(cluster, device, layers)
        metrics: dict[str, Any] = {"device": device.name, "array": device.rows,
                                   "dataflow": device.dataflow, "layers": len(layers),
                                   "layers_time_s": layers_s}
        own = group_utilisation(sweep_table(device, layers, [device.rows], [device.dataflow]))
        for row in own.itertuples():
            metrics[f"{row.group}_utilisation"] = row.utilisation
        for group, rows in groups.groupby("group", sort=False):
            best, worst = rows.loc[rows["utilisation"].idxmax()], rows.loc[rows["utilisation"].idxmin()]
            for label, row in (("best", best), ("worst", worst)):
                metrics[f"{group}_{label}"] = (f"{row['utilisation']:.3f} ({row['dataflow']}, "
                                               f"{int(row['array'])})")
        title = f"{device.name}: utilisation by layer group, array size and dataflow"
        return RunResult(metrics, trace if record_trace else None, {
            "utilisation_heatmap": lambda path: plot_heatmap(groups, path, title),
            "layer_table": lambda path: table.to_csv(str(path).removesuffix(".png") + ".csv",
                                                     index=False),
        })

    def _run_on_engine(self, cluster: Cluster, device: SystolicArray, layers: list[LayerGemm]):
        """Every layer as a task on device 0, in order: the event-level time and trace."""
        program = Program()
        for name in cluster.names:
            program.device(name)
        previous: tuple[int, ...] = ()
        for layer in layers:
            op = matmul(layer.m, layer.n, layer.k, batch=layer.count, dtype=self.dtype,
                        shared_b=layer.group != "mobilenet_dw", name=f"{layer.group}.{layer.name}")
            task = program.compute(0, "compute", op.name, device.op_time(op), deps=previous,
                                   labels={"group": layer.group, "m": layer.m, "n": layer.n,
                                           "k": layer.k, "count": layer.count})
            previous = (task,)
        sim = Simulation(**cluster.simulation_kwargs(), record_trace=True)
        trace = sim.run_program(program)
        return sim.env.now, trace
