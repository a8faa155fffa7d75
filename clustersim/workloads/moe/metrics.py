"""Metrics and the heatmap of an expert-parallel run, from the plan's record and the trace.

* ``moe_layer_time_s``: mean over forward MoE blocks of the EP group's span (first permute to
  last unpermute);
* ``moe_tail``: mean over blocks of the slowest device's expert compute over the mean device's;
* ``moe_load_imbalance``: mean over layers of max / mean tokens per device (1 = balanced);
* ``a2a_time_s``: all-to-all busy time per device (dispatch and combine, forward and backward);
* ``a2a_bytes``, ``a2a_cross_node_bytes``, ``a2a_max_pair_bytes``: bytes between distinct devices;
* ``tokens_dropped`` and ``drop_fraction`` (capacity factor), and the placement's objective terms;
* ``peak_memory_max_gib`` / ``_min_gib``: the highest and lowest device peak (the hot experts'
  devices keep more activations).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clustersim.workloads.moe.ep_layer import EPPlan


def ep_metrics(plan: EPPlan, sim, program, cluster) -> dict[str, Any]:
    end_of = {task: (start, end) for task, start, end in sim.recorder.spans}
    spans, tails = [], []
    for _layer, tasks in plan.record.blocks:
        starts = [end_of[first][0] for first, _, _ in tasks.values()]
        ends = [end_of[last][1] for _, _, last in tasks.values()]
        spans.append(max(ends) - min(starts))
        busy = np.array([sum(end_of[t][1] - end_of[t][0] for t in experts)
                         for _, experts, _ in tasks.values()])
        if busy.mean() > 0:
            tails.append(busy.max() / busy.mean())
    a2a_busy = 0.0
    devices = set()
    for task, (start, end) in end_of.items():
        t = program.tasks[task]
        if t.stream in ("ep out", "ep back"):
            a2a_busy += end - start
            devices.add(t.device)
    pb = plan.record.pair_bytes.copy()
    np.fill_diagonal(pb, 0.0)
    node = np.arange(len(pb)) // cluster.gpus_per_node
    cross_node = pb[node[:, None] != node[None, :]].sum()
    td = plan.record.tokens_device
    used = td.sum(axis=0) > 0
    imbalance = [row[used].max() / row[used].mean() for row in td if row[used].mean() > 0]
    summary = plan.placement_summary()
    peaks = [pool.peak_bytes for (name, tier), pool in sim.pools.items()
             if tier == plan.activation_tier] if plan.activation_tier else [0.0]
    return {
        "ep": plan.ep,
        "placement": plan.options.placement,
        "moe_layer_time_s": float(np.mean(spans)) if spans else 0.0,
        "moe_tail": float(np.mean(tails)) if tails else 1.0,
        "moe_load_imbalance": float(np.mean(imbalance)) if imbalance else 1.0,
        "a2a_time_s": a2a_busy / max(len(devices), 1),
        "a2a_bytes": float(pb.sum()),
        "a2a_cross_node_bytes": float(cross_node),
        "a2a_max_pair_bytes": float(pb.max()) if pb.size else 0.0,
        "tokens_routed": plan.record.routed,
        "tokens_dropped": plan.record.dropped,
        "drop_fraction": plan.record.dropped / plan.record.routed if plan.record.routed else 0.0,
        "placement_cross_device_tokens": summary["cross_device_tokens"],
        "placement_cross_node_tokens": summary["cross_node_tokens"],
        # each device keeps its own experts' activations: skew makes the hot devices' peak
        "peak_memory_max_gib": max(peaks) / 2**30,
        "peak_memory_min_gib": min(peaks) / 2**30,
    }


def plot_heatmap(plan: EPPlan, names: list[str], path: str, title: str = "") -> None:
    """Tokens per (layer, expert), tokens per (layer, device), all-to-all bytes per device pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = plan.record
    pair_mib = rec.pair_bytes / 2**20
    np.fill_diagonal(pair_mib, 0.0)   # a device's tokens for itself never leave it
    used = np.flatnonzero(rec.tokens_device.sum(axis=0) > 0)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [(rec.tokens_expert, "tokens per expert", "expert", "layer"),
              (rec.tokens_device[:, used], "tokens per device", "device", "layer"),
              (pair_mib[np.ix_(used, used)], "all-to-all MiB per device pair",
               "destination device", "source device")]
    for ax, (data, label, xlabel, ylabel) in zip(axes, panels):
        image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title or f"{plan.model.name}: EP={plan.ep}, placement {plan.options.placement}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
