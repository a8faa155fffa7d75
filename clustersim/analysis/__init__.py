"""Analysis of saved runs, for Jupyter: no re-simulation, only the files a run wrote.

* ``load_run(folder)``: results (one row per point), resolved configs, summary, and each
  point's Chrome trace back as DataFrames (``TraceTables``: spans, memory, counters, links);
* ``utilisation``: busy fraction per device and per stream, compute/communication overlap and
  exposed communication, link utilisation over time;
* ``critical_path``: the chain of tasks that set the makespan of a simulated trace;
* ``compare_spans``: two runs span by span (which ops got slower, by how much);
* ``pareto_front``: the non-dominated points of a sweep.
"""

from clustersim.analysis.compare import compare_spans, compare_totals
from clustersim.analysis.critical_path import critical_path
from clustersim.analysis.pareto import pareto_front
from clustersim.analysis.run_folder import RunFolder, load_run
from clustersim.analysis.trace_tables import TraceTables, read_chrome_trace
from clustersim.analysis.utilisation import (busy_time_s, link_utilisation_over_time, overlap,
                                             utilisation)

__all__ = ["RunFolder", "TraceTables", "busy_time_s", "compare_spans", "compare_totals",
           "critical_path", "link_utilisation_over_time", "load_run", "overlap", "pareto_front",
           "read_chrome_trace", "utilisation"]
