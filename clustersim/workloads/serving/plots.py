"""Serving plots: latency CDFs and KV use over time for one run, metrics against load for a sweep.

Each function draws into ``path`` (PNG) and closes its figure. From the shell, after
``clustersim run experiments/serving_chunked_prefill.yaml``::

    python -m clustersim.workloads.serving.plots runs/serving_chunked_prefill \\
        --x workload.requests.arrival.rate --hue workload.scheduler.policy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_latency_cdfs(table: pd.DataFrame, path: str, *, title: str = "") -> None:
    """Empirical CDFs of TTFT, TPOT and end-to-end latency (finished requests)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, column, label in zip(axes, ("ttft_s", "tpot_s", "e2e_s"),
                                 ("time to first token (s)", "time per output token (ms)",
                                  "end-to-end latency (s)")):
        values = np.sort(table[column].dropna().to_numpy())
        if column == "tpot_s":
            values = values * 1e3
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post")
            for q in (0.5, 0.9, 0.99):
                ax.axhline(q, color="#bbbbbb", lw=0.6, zorder=0)
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kv_usage(result, path: str, *, title: str = "") -> None:
    """KV blocks in use over time per engine, as a fraction of its blocks; running and waiting
    requests below."""
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    for engine in result.engines:
        times = np.array([t for t, _ in engine.kv_timeline] + [result.makespan_s])
        used = np.array([u for _, u in engine.kv_timeline] + [engine.kv_timeline[-1][1]])
        ax.step(times, used / engine.blocks.total, where="post", lw=0.9, label=engine.name)
        if engine.iterations:
            its = np.array([(it[0], it[2]) for it in engine.iterations])
            ax2.plot(its[:, 0], its[:, 1], lw=0.7, label=f"{engine.name} decodes")
    ax.set_ylabel("KV blocks in use")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    if len(result.engines) <= 8:
        ax.legend(fontsize=7, loc="upper right")
    ax2.set_ylabel("decode batch")
    ax2.set_xlabel("time (s)")
    ax2.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replica_load(load: pd.DataFrame, path: str, *, title: str = "") -> None:
    """Outstanding requests each replica had as requests arrived (``metrics.replica_load``),
    one line per replica: how evenly the router spread the load over time."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    for replica, rows in load.sort_values("time_s").groupby("replica"):
        ax.step(rows["time_s"], rows["outstanding"], where="post", lw=0.8,
                label=f"replica {replica}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("outstanding requests")
    ax.grid(alpha=0.3)
    if load["replica"].nunique() <= 8:
        ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_against(table: pd.DataFrame, path: str, *, x: str, ys: list[str],
                 hue: str | None = None, title: str = "", logy: bool = False) -> None:
    """One panel per metric in ``ys`` against ``x``, one line per ``hue`` value."""
    fig, axes = plt.subplots(1, len(ys), figsize=(4.3 * len(ys), 3.8), squeeze=False)
    groups = list(table.groupby(hue, sort=False)) if hue else [(None, table)]
    for ax, y in zip(axes[0], ys):
        for key, group in groups:
            group = group.sort_values(x)
            ax.plot(group[x], group[y], marker="o", ms=3,
                    label=None if key is None else str(key))
        ax.set_xlabel(x.split(".")[-1])
        ax.set_ylabel(y)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if hue:
        axes[0][0].legend(fontsize=7, title=hue.split(".")[-1], title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DEFAULT_YS = ["throughput_tokens_per_s", "goodput_requests_per_s", "ttft_p99_s", "tpot_p99_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="plot serving metrics of a sweep")
    parser.add_argument("run_dir", type=Path, help="folder with results.csv")
    parser.add_argument("--x", required=True, help="swept key on the x axis")
    parser.add_argument("--hue", default=None, help="swept key, one line per value")
    parser.add_argument("--y", nargs="*", default=DEFAULT_YS, help="metrics to plot")
    parser.add_argument("--out", default=None, help="PNG path (default run_dir/sweep.png)")
    parser.add_argument("--logy", action="store_true")
    args = parser.parse_args(argv)
    table = pd.read_csv(args.run_dir / "results.csv")
    table = table[table["status"] == "ok"]
    out = args.out or str(args.run_dir / "sweep.png")
    plot_against(table, out, x=args.x, ys=args.y, hue=args.hue, logy=args.logy,
                 title=args.run_dir.name)


if __name__ == "__main__":
    main()
