"""Greedy construction of stage orders by an idealised event loop.

Some papers' schedules come from a solver or a greedy search rather than a closed form (ZB-V in
the zero-bubble work, BitPipe's interleaving of its forward and backward lists). Their
generators here run this loop: unit-cost passes, every idle stage asks a *policy* for its next
action among those whose dependencies have finished, and the loop records each stage's order.
Only the order is kept; time is for the analysis and the engine to decide.
"""

from __future__ import annotations

import heapq
from typing import Callable, Protocol

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.layout import Layout

Ready = Callable[[Action], bool]


class Policy(Protocol):
    """Chooses what an idle stage runs next; told what was chosen."""

    def choose(self, stage: int, ready: Ready) -> Action | None: ...

    def commit(self, action: Action) -> None: ...

    def finished(self) -> bool: ...


def greedy_orders(layout: Layout, policy: Policy, duration: Callable[[Action], float],
                  backward_kind: ActionKind = ActionKind.B) -> tuple[tuple[Action, ...], ...]:
    """Per-stage orders produced by running ``policy`` in an event loop (no communication cost)."""
    p = layout.num_stages
    end: dict[Action, float] = {}
    free = [0.0] * p
    orders: list[list[Action]] = [[] for _ in range(p)]
    events: list[float] = []
    now = 0.0

    def ready(action: Action) -> bool:
        for dep in layout.dependencies(action, lambda mb, k: backward_kind):
            finish = end.get(dep.action)
            if finish is None or finish > now:
                return False
        return True

    while not policy.finished():
        chose = False
        for stage in range(p):
            if free[stage] > now:
                continue
            action = policy.choose(stage, ready)
            if action is None:
                continue
            policy.commit(action)
            end[action] = free[stage] = now + duration(action)
            heapq.heappush(events, free[stage])
            orders[stage].append(action)
            chose = True
        if chose:
            continue
        while events and events[0] <= now:
            heapq.heappop(events)
        if not events:
            raise ScheduleError(f"greedy construction stuck at t={now}: no stage can run a "
                                f"pass and none is running")
        now = heapq.heappop(events)
    return tuple(tuple(row) for row in orders)
