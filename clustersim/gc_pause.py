"""Pausing Python's cyclic garbage collector around bulk work that makes many containers.

Building and validating a schedule, compiling a training step, building a Program or writing a
trace allocates hundreds of thousands of small dicts, lists and tuples that live until the work
ends; every 700 allocations the collector runs, and its older generations rescan the whole heap (the program, the trace, pandas' modules), a third of the cost
of a Chrome trace export. Nothing of this work makes reference cycles that must be freed early,
so the collector is paused for it and resumed (if it was running) after.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """Run the body with the cyclic collector off; restore its previous state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
