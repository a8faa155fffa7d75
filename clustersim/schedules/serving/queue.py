"""The waiting queue: arrival order with O(1) removal anywhere, and groups by shared prefix.

Pure data (no clock, no engine). Preempted requests that must recompute go back to the front,
as in vLLM. ``grouped`` walks the queue so that requests sharing a prefix come out together:
first the groups of the prefixes given in ``first`` (resident in the KV cache, in its order),
then the other groups in the order of their oldest request. A prefix id of -1 means none; every other id (negative ones name
radix-tree branches, see ``workloads/serving``) groups. It is lazy (a policy that stops after a few
requests pays for a few) and must not outlive a change to the queue.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator
from typing import Generic, TypeVar

from clustersim.schedules.serving.batch import Waiting

W = TypeVar("W", bound=Waiting)


class WaitingQueue(Generic[W]):
    """Requests without KV blocks, in arrival order (front = oldest, or preempted)."""

    __slots__ = ("_order", "_groups")

    def __init__(self) -> None:
        self._order: OrderedDict[int, W] = OrderedDict()
        # prefix id -> its waiting requests in queue order (every id but -1, which means none)
        self._groups: dict[int, OrderedDict[int, W]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __bool__(self) -> bool:
        return bool(self._order)

    def __iter__(self) -> Iterator[W]:
        return iter(self._order.values())

    def __contains__(self, rid: int) -> bool:
        return rid in self._order

    def get(self, rid: int) -> W | None:
        return self._order.get(rid)

    def push_back(self, entry: W) -> None:
        self._add(entry, front=False)

    def push_front(self, entry: W) -> None:
        self._add(entry, front=True)

    def _add(self, entry: W, *, front: bool) -> None:
        if entry.rid in self._order:
            raise ValueError(f"request {entry.rid} is already waiting")
        self._order[entry.rid] = entry
        if front:
            self._order.move_to_end(entry.rid, last=False)
        if entry.prefix_id != -1:
            group = self._groups.setdefault(entry.prefix_id, OrderedDict())
            group[entry.rid] = entry
            if front:
                group.move_to_end(entry.rid, last=False)

    def remove(self, rid: int) -> W:
        entry = self._order.pop(rid)
        if entry.prefix_id != -1:
            group = self._groups[entry.prefix_id]
            del group[rid]
            if not group:
                del self._groups[entry.prefix_id]
        return entry

    def head(self) -> W | None:
        return next(iter(self._order.values()), None)

    def group_sizes(self) -> dict[int, int]:
        """Waiting requests per prefix id."""
        return {pid: len(group) for pid, group in self._groups.items()}

    def grouped(self, first: Collection[int] = ()) -> Iterator[W]:
        """Requests with their prefix groups kept together (see the module docstring)."""
        done: set[int] = set()
        # A collection that can pick its members among the waiting groups itself (a radix
        # cache's branches) is asked to, so a large cache is not scanned for a few groups.
        among = getattr(first, "among", None)
        resident = among(self._groups) if among is not None else first
        for pid in resident:
            group = self._groups.get(pid)
            if group and pid not in done:
                done.add(pid)
                yield from group.values()
        for entry in self._order.values():
            pid = entry.prefix_id
            if pid == -1:
                yield entry
            elif pid not in done:
                done.add(pid)
                yield from self._groups.get(pid, {}).values()
