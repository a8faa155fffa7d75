"""Plots of a simulated training step: the pipeline Gantt chart as the papers draw it (stage on
y, time on x, one colour per micro-batch, passes shaded F dark / B light / W hatched) and
memory in use over time per stage."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

_PASS_STYLE = {  # alpha, hatch
    "F": (1.0, None), "BW": (0.55, None), "B": (0.55, None), "W": (0.3, "///"),
    "S": (0.9, ".."), "T": (0.5, ".."), "IF": (0.9, "xx"), "IB": (0.5, "xx"),
}


def plot_pipeline(trace, stage_devices: dict[int, str], path: str | None = None, *,
                  title: str = "", max_labels: int = 64, tier: str = "hbm"):
    """Gantt of each stage's compute stream (one bar per pass) and its memory below."""
    spans = trace.spans
    compute = spans[(spans["stream"] == "compute") & spans["device"].isin(stage_devices.values())
                    & spans["pass"].notna()]
    passes = (compute.groupby(["stage", "pass", "microbatch", "chunk"], dropna=True)
              .agg(start_s=("start_s", "min"), end_s=("end_s", "max")).reset_index())
    optimizer = spans[(spans["category"] == "optimizer")
                      & spans["device"].isin(stage_devices.values())]
    fig, (ax, mem_ax) = plt.subplots(2, 1, figsize=(13, 1.0 + 0.55 * len(stage_devices) + 2.5),
                                     sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    palette = plt.get_cmap("tab20")
    small = len(passes) <= max_labels * max(1, len(stage_devices))
    for stage, kind, microbatch, _chunk, start_s, end_s in passes.itertuples(index=False, name=None):
        alpha, hatch = _PASS_STYLE.get(kind, (1.0, None))
        colour = palette(int(microbatch) % 20)
        ax.barh(int(stage), (end_s - start_s) * 1e3, left=start_s * 1e3, height=0.8,
                color=colour, alpha=alpha, hatch=hatch, edgecolor="black", linewidth=0.2)
        if small and len(passes) <= 400:
            ax.text((start_s + end_s) / 2 * 1e3, int(stage), f"{kind[0].lower()}{int(microbatch)}",
                    ha="center", va="center", fontsize=5)
    for row in optimizer.itertuples(index=False):
        stage = next(s for s, d in stage_devices.items() if d == row.device)
        ax.barh(stage, (row.end_s - row.start_s) * 1e3, left=row.start_s * 1e3, height=0.8,
                color="#444444")
    ax.set_yticks(sorted(stage_devices), [f"stage {s}" for s in sorted(stage_devices)])
    ax.set_ylim(len(stage_devices) - 0.5, -0.5)
    ax.set_title(title or "pipeline schedule")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="grey", alpha=a, hatch=h, edgecolor="black")
               for a, h in (_PASS_STYLE["F"], _PASS_STYLE["BW"], _PASS_STYLE["W"])]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="#444444"))
    ax.legend(handles, ["forward", "backward (B / BW)", "weight grad (W)", "optimizer"],
              loc="upper right", fontsize=7, ncol=4)
    memory = trace.memory
    for stage, device in sorted(stage_devices.items()):
        curve = memory[(memory["device"] == device) & (memory["tier"] == tier)]
        mem_ax.step(curve["time_s"] * 1e3, curve["used_bytes"] / 2**30, where="post",
                    label=f"stage {stage}", linewidth=1)
    mem_ax.set_ylabel(f"{tier} in use (GiB)")
    mem_ax.set_xlabel("time (ms)")
    mem_ax.legend(fontsize=7, ncol=min(8, len(stage_devices)))
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
