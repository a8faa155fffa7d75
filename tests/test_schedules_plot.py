"""Gantt and memory plots: drawn on an Agg canvas, silently, without touching pyplot."""

from __future__ import annotations

import os
import subprocess
import sys

from clustersim.schedules import make_schedule, memory_over_time, simulate
from clustersim.schedules.plot import plot_gantt, plot_memory, plot_schedule


def test_plot_schedule_draws_a_gantt_and_memory_curves_and_saves(tmp_path, capsys):
    fig = plot_schedule(make_schedule("zb-h1", 4, 8))
    gantt, memory = fig.axes
    assert len(gantt.patches) == 4 * 8 * 3  # one bar per action
    assert len(memory.get_lines()) == 4  # one curve per stage
    assert "bubble" in gantt.get_title()
    fig.savefig(tmp_path / "zb-h1.png")
    assert (tmp_path / "zb-h1.png").stat().st_size > 0
    assert capsys.readouterr() == ("", "")


def test_plots_draw_on_a_given_axes():
    timeline = simulate(make_schedule("v-half", 2, 4))
    first = plot_gantt(timeline)
    ax = first.axes[0]
    assert plot_memory(timeline, ax=ax) is first


def test_memory_curve_peaks_where_the_order_says():
    timeline = simulate(make_schedule("1f1b", 4, 8))
    peaks = [max(level for _, level in steps) for steps in memory_over_time(timeline)]
    assert peaks == [4.0, 3.0, 2.0, 1.0]


def test_plotting_neither_imports_pyplot_nor_prints():
    code = ("import sys; from clustersim.schedules import make_schedule; "
            "from clustersim.schedules.plot import plot_schedule; "
            "plot_schedule(make_schedule('bitpipe', 4, 4)).savefig(sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, "/dev/null"], capture_output=True,
                         text=True, check=True, env={**os.environ, "MPLBACKEND": "TkAgg"})
    assert out.stdout == "" and out.stderr == ""
