"""clustersim: a discrete-event simulator of ML clusters, accelerators and parallel schedules."""

__version__ = "0.1.0"
