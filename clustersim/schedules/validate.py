"""Prove a schedule: named passes, each raising an error that names stage, action and rule.

Run them all with :func:`validate`; each pass is also callable alone. In order:

1. ``structure``: every action sits on its own stage's list, within the micro-batch range, on a
   (stage, chunk) its micro-batch actually visits; vocabulary passes only with vocabulary
   parallelism.
2. ``exactly once``: every (micro-batch, chunk) pass appears exactly once on the stage it belongs
   to: ``F``, and either ``BW`` or both ``B`` and ``W``; with vocabulary parallelism ``S``, ``T``,
   ``IF`` and ``IB`` once per micro-batch on every stage. Deferred ``W`` passes are therefore
   drained before the optimizer step.
3. ``local order``: a pass comes after what it needs from its own stage (``B`` after ``F``,
   ``W`` after ``B``, ``T`` after ``S``, a chunk after the previous chunk on the same stage).
4. ``communication``: every cross-stage dependency is a send that the producer's stage makes and
   a receive that the consumer's stage makes; both sides are counted per channel and must match.
5. ``deadlock freedom``: replay every stage's list against the dependency graph, running each
   stage's head action as soon as its inputs exist (the way DeepSpeed's schedule test replays
   all ranks). A state where no stage can move raises :class:`DeadlockError` listing each stage's
   stuck head action and what it waits for.
"""

from __future__ import annotations

import heapq

from collections import Counter
from typing import Callable, Iterable

from clustersim.errors import DeadlockError, ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.layout import Link
from clustersim.schedules.schedule import Schedule


def _token(schedule: Schedule, action: Action) -> str:
    return action.token(show_chunk=schedule.num_chunks > 1 or action.chunk != 0)


def _where(schedule: Schedule, action: Action) -> str:
    return f"stage {action.stage} {_token(schedule, action)}"


def _error(schedule: Schedule, action: Action, detail: str, rule: str) -> ScheduleError:
    error = ScheduleError(f"schedule {schedule.name!r}: stage {action.stage}: "
                          f"{_token(schedule, action)}: {detail} (rule: {rule})")
    error.stage, error.action, error.rule = action.stage, action, rule  # type: ignore[attr-defined]
    return error


def expected_actions(schedule: Schedule) -> list[Action]:
    """Every action a complete schedule with this layout runs (backward kind as the schedule uses)."""
    cached = schedule.__dict__.get("_expected_actions")
    if cached is None:  # two passes ask; the schedule is immutable
        cached = _expected_actions(schedule)
        schedule.__dict__["_expected_actions"] = cached
    return list(cached)


def _expected_actions(schedule: Schedule) -> tuple[Action, ...]:
    layout, expected = schedule.layout, []
    for mb in range(schedule.num_microbatches):
        for k in layout.path(mb):
            expected.append(layout.action(ActionKind.F, mb, k))
            backward = schedule.input_grad_kind(mb, k)
            expected.append(layout.action(backward, mb, k))
            if backward is ActionKind.B:
                expected.append(layout.action(ActionKind.W, mb, k))
        if schedule.vocab_algorithm is not None:
            for kind in (ActionKind.IF, ActionKind.S, ActionKind.T, ActionKind.IB):
                expected.extend(Action(s, kind, mb) for s in range(schedule.num_stages))
    return tuple(expected)


def check_structure(schedule: Schedule) -> None:
    """Pass 1: actions are where they claim to be and visit chunks their micro-batch visits."""
    rule = "an action belongs to its stage's list and to its micro-batch's path"
    for stage, row in enumerate(schedule.actions):
        for action in row:
            if action.stage != stage:
                raise _error(schedule, action, f"listed under stage {stage}", rule)
            if action.microbatch >= schedule.num_microbatches:
                raise _error(schedule, action, f"micro-batch {action.microbatch} is outside "
                             f"0..{schedule.num_microbatches - 1}", rule)
            if action.kind.is_vocabulary:
                if schedule.vocab_algorithm is None:
                    raise _error(schedule, action, "vocabulary pass in a schedule without "
                                 "vocabulary parallelism", rule)
                if action.chunk != 0:
                    raise _error(schedule, action, "vocabulary passes use chunk 0", rule)
            elif not schedule.layout.on_path(action.microbatch, stage, action.chunk):
                raise _error(schedule, action, f"micro-batch {action.microbatch} does not visit "
                             f"chunk {action.chunk} of stage {stage}", rule)


def check_exactly_once(schedule: Schedule) -> None:
    """Pass 2: every required pass once, nothing twice, no fused and split backward mixed."""
    rule = "every (micro-batch, chunk) action exactly once on the stage it belongs to"
    graph = _graph(schedule)
    counts = graph.index
    if graph.duplicated:
        counts = Counter(schedule)
        for action, count in counts.items():
            if count > 1:
                raise _error(schedule, action, f"appears {count} times", rule)
    # (stage, micro-batch, chunk) of the W passes: a BW there mixes fused and split backward.
    split = {(a.stage, a.microbatch, a.chunk) for a in graph.actions if a.kind is ActionKind.W}
    if split:
        for action in graph.actions:
            if action.kind is ActionKind.BW and (action.stage, action.microbatch,
                                                 action.chunk) in split:
                raise _error(schedule, action, "fused backward together with a separate w", rule)
    for action in expected_actions(schedule):
        if action not in counts:
            raise _error(schedule, action, "missing", rule)


def _rule_name(consumer: Action, producer: Action) -> str:
    names = {
        (ActionKind.W, ActionKind.B): "W after B",
        (ActionKind.B, ActionKind.F): "B after F",
        (ActionKind.BW, ActionKind.F): "B after F",
        (ActionKind.T, ActionKind.S): "T after S",
        (ActionKind.S, ActionKind.F): "S after the last chunk's F",
        (ActionKind.F, ActionKind.IF): "F after IF",
        (ActionKind.F, ActionKind.F): "F after the previous chunk's F",
    }
    return names.get((consumer.kind, producer.kind), f"{consumer.kind.name} after "
                     f"{producer.kind.name}")


def check_local_order(schedule: Schedule) -> None:
    """Pass 3: within a stage, each action comes after the same-stage actions it needs."""
    graph = _graph(schedule)
    if graph.duplicated:
        return _check_local_order_rows(schedule)
    # Actions are numbered stage by stage in each stage's order: a same-row producer numbered
    # after its consumer comes after it.
    actions, row_of = graph.actions, graph.row_of
    for i, needs in enumerate(graph.needs):
        for j in needs:
            if j > i and row_of[j] == row_of[i] and actions[j].stage == row_of[i]:
                raise _error(schedule, actions[i], f"comes before {_token(schedule, actions[j])}",
                             _rule_name(actions[i], actions[j]))


def _check_local_order_rows(schedule: Schedule) -> None:
    """``check_local_order`` for a schedule that lists an action twice (last position counts)."""
    for stage, row in enumerate(schedule.actions):
        position = {action: i for i, action in enumerate(row)}
        for i, action in enumerate(row):
            for dep in schedule.dependencies(action):
                j = position.get(dep.action)
                if dep.action.stage == stage and j is not None and j > i:
                    raise _error(schedule, action, f"comes before {_token(schedule, dep.action)}",
                                 _rule_name(action, dep.action))


def check_communication(schedule: Schedule) -> None:
    """Pass 4: sends (from producers) and receives (at consumers) match on every channel."""
    present = set(schedule)
    consumers: dict[Action, list[tuple[Action, Link]]] = {}
    for action in expected_actions(schedule):
        for dep in schedule.dependencies(action):
            consumers.setdefault(dep.action, []).append((action, dep.link))
    sends: Counter[tuple[int, int, Link]] = Counter()
    receives: Counter[tuple[int, int, Link]] = Counter()
    rule = "every receive has a matching send"
    for action in schedule:
        for dep in schedule.dependencies(action):
            if dep.action.stage == action.stage:
                continue
            if dep.action not in present:
                raise _error(schedule, action, f"waits for {_where(schedule, dep.action)} "
                             f"({dep.link.value}), which stage {dep.action.stage} never runs", rule)
            receives[(dep.action.stage, action.stage, dep.link)] += 1
        for consumer, link in consumers.get(action, ()):
            if consumer.stage == action.stage:
                continue
            if consumer not in present:
                raise _error(schedule, action, f"sends {link.value} to {_where(schedule, consumer)}, which "
                             f"stage {consumer.stage} never runs", "every send has a matching receive")
            sends[(action.stage, consumer.stage, link)] += 1
    for channel in sorted(set(sends) | set(receives), key=lambda c: (c[0], c[1], c[2].value)):
        if sends[channel] != receives[channel]:
            src, dst, link = channel
            raise ScheduleError(
                f"schedule {schedule.name!r}: {link.value} from stage {src} to stage {dst}: "
                f"{sends[channel]} sends but {receives[channel]} receives (rule: sends match receives)")


class _Graph:
    """A schedule's dependency graph in integers, built once per (immutable) schedule.

    Actions are numbered in schedule order, stage by stage (``actions``, ``row_of``: the stage
    list each is on); ``needs[i]`` numbers the actions action ``i`` waits for (-1: one the
    schedule does not run). The validation passes and the replay walk these lists instead of
    hashing frozen actions. ``order``: the replay's global order, kept once computed.
    """

    __slots__ = ("actions", "row_of", "starts", "index", "needs", "duplicated", "order")

    def __init__(self, schedule: Schedule):
        self.actions = [action for row in schedule.actions for action in row]
        self.row_of = [stage for stage, row in enumerate(schedule.actions) for _ in row]
        self.starts, start = [], 0
        for row in schedule.actions:
            self.starts.append(start)
            start += len(row)
        self.index = {action: i for i, action in enumerate(self.actions)}
        self.duplicated = len(self.index) != len(self.actions)
        get, dependencies = self.index.get, schedule.dependencies
        self.needs = [tuple([get(dep.action, -1) for dep in dependencies(action)])
                      for action in self.actions]
        self.order: tuple[list[int], list[int]] | None = None


def _graph(schedule: Schedule) -> _Graph:
    graph = schedule.__dict__.get("_graph")
    if graph is None:  # every pass and the compiler's replay share it; the schedule is immutable
        graph = schedule.__dict__["_graph"] = _Graph(schedule)
    return graph


def replay(schedule: Schedule, on_run: Callable[[Action], None] | None = None) -> None:
    """Run every stage's list in order, each head as soon as its dependencies have run.

    Calls ``on_run(action)`` in a valid global order. Raises :class:`DeadlockError` naming the
    stuck head action of every stage when no stage can move. Event-driven: each action counts
    its unmet dependencies, and finishing one wakes only the stages whose head it unblocks, so
    the cost is linear in actions and dependencies. The order is computed once per schedule
    (on integers, see ``_Graph``) and walked again by later replays.
    """
    graph = _graph(schedule)
    if graph.duplicated:
        return _replay_actions(schedule, on_run)
    if graph.order is None:
        graph.order = _replay_order(graph, [len(row) for row in schedule.actions])
    order, heads = graph.order
    if on_run is not None:
        actions = graph.actions
        for i in order:
            on_run(actions[i])
    if len(order) < len(graph.actions):
        deps = {a: tuple(d.action for d in schedule.dependencies(a)) for a in schedule}
        done = {graph.actions[i] for i in order}
        raise _deadlock(schedule, heads, deps, done)


def _replay_order(graph: _Graph, lengths: list[int]) -> tuple[list[int], list[int]]:
    """(actions run, in order; each stage's head position at the end): ``_replay_actions`` on
    the integer graph, visiting stages in the same sweeps."""
    needs, row_of, starts = graph.needs, graph.row_of, graph.starts
    stage_of = [action.stage for action in graph.actions]
    waiting = [len(need) for need in needs]
    dependents: list[list[int]] = [[] for _ in needs]
    for i, need in enumerate(needs):
        for j in need:
            if j >= 0:
                dependents[j].append(i)
    heads = [0] * len(lengths)
    order: list[int] = []
    ready = [(0, stage) for stage, length in enumerate(lengths) if length]
    while ready:
        sweep, stage = heapq.heappop(ready)
        start, length = starts[stage], lengths[stage]
        head = heads[stage]
        while head < length and waiting[start + head] == 0:
            i = start + head
            head += 1
            order.append(i)
            for dependent in dependents[i]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    other = row_of[dependent]
                    # (a stage listing an action of another stage is woken only by its own
                    # actions, as the replay over actions does: it looks the action's stage up)
                    if (other != stage and starts[other] + heads[other] == dependent
                            and stage_of[dependent] == other):
                        heapq.heappush(ready, (sweep if other > stage else sweep + 1, other))
        heads[stage] = head
    return order, heads


def _replay_actions(schedule: Schedule, on_run: Callable[[Action], None] | None = None) -> None:
    """``replay`` over the actions themselves (for a schedule listing an action twice)."""
    rows = schedule.actions
    deps = {a: tuple(d.action for d in schedule.dependencies(a)) for a in schedule}
    waiting = {a: len(d) for a, d in deps.items()}
    dependents: dict[Action, list[Action]] = {}
    for action, needs in deps.items():
        for need in needs:
            dependents.setdefault(need, []).append(action)
    # Stages are visited in sweeps 0..p-1, each running as far as it can, as a plain loop over
    # the stages would; the order matters to compilers that walk it (collectives over the
    # pipeline group are created in this order). A heap of (sweep, stage) keeps that order while
    # visiting only stages that can move: a stage unblocked by a lower one runs in the same
    # sweep, by a higher one in the next.
    heads = [0] * len(rows)
    ready = [(0, stage) for stage, row in enumerate(rows) if row]
    while ready:
        sweep, stage = heapq.heappop(ready)
        row = rows[stage]
        while heads[stage] < len(row) and waiting[row[heads[stage]]] == 0:
            action = row[heads[stage]]
            heads[stage] += 1
            if on_run is not None:
                on_run(action)
            for dependent in dependents.get(action, ()):
                waiting[dependent] -= 1
                if waiting[dependent] == 0 and dependent.stage != stage:
                    other = dependent.stage
                    if heads[other] < len(rows[other]) and rows[other][heads[other]] == dependent:
                        heapq.heappush(ready, (sweep if other > stage else sweep + 1, other))
    if any(heads[stage] < len(row) for stage, row in enumerate(rows)):
        done = {a for stage, row in enumerate(rows) for a in row[:heads[stage]]}
        raise _deadlock(schedule, heads, deps, done)


def _deadlock(schedule: Schedule, heads: list[int], deps: dict[Action, tuple[Action, ...]],
              done: set[Action]) -> DeadlockError:
    parts, stuck = [], []
    for stage, row in enumerate(schedule.actions):
        if heads[stage] >= len(row):
            parts.append(f"stage {stage} finished")
            continue
        head = row[heads[stage]]
        waiting = [d for d in deps[head] if d not in done]
        stuck.append(head)
        parts.append(f"stage {stage} stuck at {_token(schedule, head)} (position {heads[stage]}) "
                     "waiting for " + ", ".join(_where(schedule, d) for d in waiting))
    error = DeadlockError(f"schedule {schedule.name!r} deadlocks after {len(done)} of "
                          f"{len(schedule)} actions: " + "; ".join(parts))
    error.stuck = tuple(stuck)  # type: ignore[attr-defined]
    return error


def check_deadlock_free(schedule: Schedule) -> None:
    """Pass 5: the replay of all stages runs to the end."""
    replay(schedule)


PASSES: tuple[tuple[str, Callable[[Schedule], None]], ...] = (
    ("structure", check_structure),
    ("exactly once", check_exactly_once),
    ("local order", check_local_order),
    ("communication", check_communication),
    ("deadlock freedom", check_deadlock_free),
)


def validate(schedule: Schedule, passes: Iterable[str] | None = None) -> Schedule:
    """Run the named passes (all by default) in order; return the schedule when it is sound."""
    wanted = None if passes is None else set(passes)
    unknown = (wanted or set()) - {name for name, _ in PASSES}
    if unknown:
        raise ScheduleError(f"unknown validation pass(es) {sorted(unknown)}; valid: "
                            f"{[name for name, _ in PASSES]}")
    passed: set[str] = set()
    for name, check in PASSES:
        if wanted is None or name in wanted:
            if name == "communication" and {"structure", "exactly once"} <= passed:
                # Implied: every action the layout expects runs, and nothing else, so each
                # derived cross-stage dependency is one send and one receive of a present pair.
                continue
            check(schedule)
            passed.add(name)
    return schedule
