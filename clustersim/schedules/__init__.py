"""Pipeline-parallel schedules as pure data: who runs which pass of which micro-batch, in what order.

A schedule never knows time, devices or costs; it imports neither :mod:`clustersim.sim` nor
:mod:`clustersim.hardware` (nor torch). The engine interprets it; :mod:`.analysis` list-schedules
it with idealised durations to check closed forms.

Data
----
:class:`Action` ``(stage, kind, microbatch, chunk)`` is one pass; :class:`ActionKind` is ``F``,
``B`` (input gradient), ``W`` (weight gradient), ``BW`` (fused backward), and the
vocabulary-parallel ``S``, ``T``, ``IF``, ``IB``. :class:`Schedule` holds ``actions``: one tuple
per stage, in execution order, plus the layout:

- ``placement[k]``: the stage holding virtual stage (model chunk) ``k``; an action's ``chunk`` is
  the local index of that chunk on its stage (interleaved: chunk c of stage s is virtual stage
  ``c*p + s``; V-shape: stage 0 holds virtual stages 0 and 2p-1).
- ``pipelines`` / ``microbatch_pipeline``: the virtual stages each micro-batch walks (one pipeline
  ``0..v*p-1`` except for bidirectional BitPipe, which routes half the micro-batches through a
  second model replica in the opposite direction).
- ``vocab_algorithm``: ``None`` when the input embedding and the output layer are part of the
  first and last virtual stage's passes; 1 or 2 when they are split over every stage
  (vocabulary parallelism) and appear as ``IF``/``S``/``T``/``IB`` actions on every stage.

Dependencies are derived, never stored: ``schedule.dependencies(action)`` returns
:class:`Dependency` records (producer action, :class:`Link`): ``LOCAL`` on the same stage,
``ACTIVATION`` / ``GRADIENT`` point-to-point sends between stages, and the collectives of
vocabulary parallelism (``EMBEDDING_REDUCE``, ``OUTPUT_BROADCAST``, ``OUTPUT_REDUCE``,
``SOFTMAX_ALLREDUCE``, ``EMBEDDING_GRAD_BROADCAST``; all dependencies of one action that share a
collective link are one collective over every stage). ``schedule.transfers()`` lists the
cross-stage ones. A compiler to the simulator walks each stage's tuple in order, turns each
action into a task on that stage's device, and each dependency into a task dependency, through a
send/recv (or collective) task when the link is not ``LOCAL``.

Generators (one module per paper; ``make_schedule(name, p, m, v=None, **options)``)
-----------------------------------------------------------------------------------
========================  ==================================================================
``gpipe``                 Huang et al., GPipe, NeurIPS 2019
``1f1b``                  Narayanan et al., PipeDream-Flush (ICML 2021) / Megatron (SC 2021)
``interleaved``           Narayanan et al., Megatron-LM interleaved 1F1B, SC 2021 (m % p == 0)
``zb-h1``, ``zb-h2``      Qi et al., Zero Bubble Pipeline Parallelism, ICLR 2024
``v-min``, ``v-half``,    Qi et al., Pipeline Parallelism with Controllable Memory,
``v-zb``                  NeurIPS 2024
``bitpipe``               Wu et al., BitPipe: Bidirectional Interleaved Pipeline Parallelism, 2024
``vocab-1f1b``,           Yeung et al., Balancing Pipeline Parallelism with Vocabulary
``vocab-v-half``          Parallelism, MLSys 2025 (``algorithm=1`` or ``2``)
========================  ==================================================================

ZB-H2, V-Min, V-Half, V-ZB and BitPipe reproduce their authors' open-source schedulers action by
action (``zb.py``, ``zbv_greedy.py``, ``zbv.py`` of sail-sg/zero-bubble-pipeline-parallelism;
BitPipe's ``bitpipe_schedule.py``); where a paper and its code differ, the module docstring
says so and the code is followed. Golden orders from running those schedulers are test
fixtures (``tests/data/authors_schedules.json``).

Proving and measuring
---------------------
:func:`validate` runs named passes (structure, exactly once, local order, communication,
deadlock freedom by replaying every stage) and raises :class:`~clustersim.errors.ScheduleError`
or :class:`~clustersim.errors.DeadlockError` naming stage, action and rule. :func:`simulate`
gives start/end times, makespan and bubble; :func:`peak_activations` the per-stage activation
peak; :func:`render` the compact text, e.g. 1F1B with p = 4, m = 8::

    >>> from clustersim.schedules import make_schedule, render
    >>> print(render(make_schedule("1f1b", 4, 8)))
    stage 0: f0 f1 f2 f3 b0 f4 b1 f5 b2 f6 b3 f7 b4 b5 b6 b7
    stage 1: f0 f1 f2 b0 f3 b1 f4 b2 f5 b3 f6 b4 f7 b5 b6 b7
    stage 2: f0 f1 b0 f2 b1 f3 b2 f4 b3 f5 b4 f6 b5 f7 b6 b7
    stage 3: f0 b0 f1 b1 f2 b2 f3 b3 f4 b4 f5 b5 f6 b6 f7 b7

Plots (:mod:`clustersim.schedules.plot`, imported on demand) draw a Gantt chart and memory curves
on an Agg canvas without touching pyplot.

Serving batch policies are a separate subpackage, :mod:`clustersim.schedules.serving`.
"""

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.analysis import (
    DEFAULT_DURATIONS,
    Summary,
    Timeline,
    activation_levels,
    critical_path,
    duration_function,
    memory_over_time,
    peak_activations,
    simulate,
    summarize,
)
from clustersim.schedules.arguments import ScheduleArgumentError
from clustersim.schedules.bitpipe import bitpipe
from clustersim.schedules.gpipe import gpipe
from clustersim.schedules.interleaved import interleaved
from clustersim.schedules.layout import (
    Dependency,
    Layout,
    Link,
    bidirectional_v_placement,
    interleaved_placement,
    v_shape_placement,
)
from clustersim.schedules.one_f_one_b import one_f_one_b
from clustersim.schedules.registry import SCHEDULES, make_schedule
from clustersim.schedules.schedule import Schedule
from clustersim.schedules.text import parse_rows, render, rows, schedule_from_text
from clustersim.schedules.v_shape import v_half, v_min, v_zb
from clustersim.schedules.validate import PASSES, replay, validate
from clustersim.schedules.vocab_parallel import add_vocabulary_passes, vocab_1f1b, vocab_v_half
from clustersim.schedules.zero_bubble import zb_h1, zb_h2

__all__ = [
    "Action", "ActionKind", "Schedule", "Layout", "Link", "Dependency",
    "interleaved_placement", "v_shape_placement", "bidirectional_v_placement",
    "SCHEDULES", "make_schedule", "ScheduleArgumentError",
    "gpipe", "one_f_one_b", "interleaved", "zb_h1", "zb_h2", "v_min", "v_half", "v_zb",
    "bitpipe", "vocab_1f1b", "vocab_v_half", "add_vocabulary_passes",
    "validate", "replay", "PASSES",
    "simulate", "critical_path", "peak_activations", "activation_levels", "memory_over_time",
    "duration_function", "summarize", "Summary", "Timeline", "DEFAULT_DURATIONS",
    "render", "rows", "parse_rows", "schedule_from_text",
]
