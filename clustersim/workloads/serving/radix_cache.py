"""A prefix cache as a radix tree over hashed token blocks (SGLang's RadixAttention, Zheng et
al., 2024; vLLM's automatic prefix caching hashes blocks the same way).

Each node is one hashed block of prompt tokens (a hash id of the Mooncake trace format: equal
leading ids mean an equal prefix) and holds ``node_blocks`` KV blocks. A running sequence holds
the path of its prompt's blocks: a reference on every node of it, so a node's references never
exceed its parent's. A node nobody holds stays cached until its blocks are needed; then the
least recently used leaf among unheld nodes goes first (a parent is only evicted after its
children, as in SGLang), so the longest-unused branches shrink from their tips.

Blocks come from a caller's pool (``allocate``), which evicts from the tree when it runs dry
(``BlockManager`` does); or the tree keeps to its own ``capacity_blocks`` (a router's model of
what a replica has cached). Fidelity: exact block accounting; no timing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence


class RadixCacheError(Exception):
    """The tree was asked for something its accounting forbids (a bug in the caller)."""


class _Node:
    __slots__ = ("key", "parent", "children", "refs", "last_use", "alive")

    def __init__(self, key, parent: "_Node | None"):
        self.key, self.parent = key, parent
        self.children: dict = {}
        self.refs = 0
        self.last_use = 0
        self.alive = True


class RadixTree:
    """Hashed blocks in a prefix tree with reference counts and LRU eviction of unheld leaves."""

    def __init__(self, node_blocks: int, capacity_blocks: int | None = None):
        if node_blocks < 1:
            raise ValueError(f"a radix-tree node holds at least one KV block, got {node_blocks}")
        self.node_blocks = node_blocks
        self.capacity_blocks = capacity_blocks
        self.root = _Node(None, None)
        self.root.refs = 1          # never evicted
        self.nodes = 0              # resident nodes (the root excluded)
        self.unheld_nodes = 0       # resident nodes no sequence holds (all of them evictable)
        self.evicted_nodes = 0
        self._tick = 0
        self._serial = 0
        self._leaves: list[tuple[int, int, _Node]] = []     # unheld leaves, LRU first (lazy)

    # -- views ------------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return self.nodes * self.node_blocks

    @property
    def evictable_blocks(self) -> int:
        return self.unheld_nodes * self.node_blocks

    def match(self, hashes: Sequence) -> tuple[int, int]:
        """(resident, held) nodes of the longest cached prefix of ``hashes``; held nodes are a
        prefix of the resident ones."""
        node, resident, held = self.root, 0, 0
        for key in hashes:
            node = node.children.get(key)
            if node is None:
                break
            resident += 1
            if node.refs:
                held += 1
        return resident, held

    def oldest_unheld(self) -> int | None:
        """Last-use tick of the leaf eviction would take next (None: nothing evictable)."""
        leaf = self._peek()
        return None if leaf is None else leaf.last_use

    # -- holding paths ----------------------------------------------------------------------
    def acquire(self, hashes: Sequence, allocate: Callable[[int], None] | None = None) -> int:
        """Hold every node of ``hashes``, creating the missing ones (their blocks from
        ``allocate``, or from this tree's capacity); returns how many were already resident."""
        self._tick += 1
        node, hits = self.root, 0
        for key in hashes:
            child = node.children.get(key)
            if child is None:
                # ``node`` is held already, so making room can never evict it.
                (allocate or self._allocate_own)(self.node_blocks)
                child = _Node(key, node)
                node.children[key] = child
                self.nodes += 1
            else:
                hits += 1
                if child.refs == 0:
                    self.unheld_nodes -= 1
            child.refs += 1
            child.last_use = self._tick
            node = child
        return hits

    def release(self, hashes: Sequence) -> None:
        """Let go of a path held by ``acquire``; its nodes stay cached."""
        self._tick += 1
        node = self.root
        path = []
        for key in hashes:
            node = node.children.get(key)
            if node is None or node.refs <= 0:
                raise RadixCacheError(f"release of block {key!r}, which is not held")
            path.append(node)
        for node in path:
            node.refs -= 1
            node.last_use = self._tick
            if node.refs == 0:
                self.unheld_nodes += 1
                if not node.children:
                    self._push(node)

    def insert(self, hashes: Sequence) -> int:
        """Cache a path without holding it (acquire, then release); returns the hits."""
        hits = self.acquire(hashes)
        self.release(hashes)
        return hits

    # -- eviction ---------------------------------------------------------------------------
    def evict(self, blocks: int) -> int:
        """Evict unheld leaves, least recently used first, until ``blocks`` are freed or none
        is left; returns the blocks freed."""
        freed = 0
        while freed < blocks:
            leaf = self._peek()
            if leaf is None:
                break
            heapq.heappop(self._leaves)
            self._remove(leaf)
            freed += self.node_blocks
        return freed

    def evict_one(self) -> int:
        """Evict the least recently used unheld leaf; its blocks (0 when none)."""
        return self.evict(1)

    def _remove(self, leaf: _Node) -> None:
        parent = leaf.parent
        del parent.children[leaf.key]
        leaf.alive = False
        self.nodes -= 1
        self.unheld_nodes -= 1
        self.evicted_nodes += 1
        if parent is not self.root and parent.refs == 0 and not parent.children:
            self._push(parent)

    def _allocate_own(self, blocks: int) -> None:
        cap = self.capacity_blocks
        if cap is None:
            return
        over = self.blocks + blocks - cap
        if over > 0 and self.evict(over) < over:
            raise RadixCacheError(f"radix cache of {cap} blocks is full of held paths; cannot add "
                                  f"{blocks} more")

    def _push(self, node: _Node) -> None:
        self._serial += 1
        heapq.heappush(self._leaves, (node.last_use, self._serial, node))

    def _peek(self) -> _Node | None:
        heap = self._leaves
        while heap:
            last_use, _, node = heap[0]
            if node.alive and node.refs == 0 and not node.children and node.last_use == last_use:
                return node
            heapq.heappop(heap)
        return None

    def check(self) -> None:
        """Raise RadixCacheError unless counts match the tree (tests, end of run)."""
        count = unheld = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for child in node.children.values():
                count += 1
                unheld += child.refs == 0
                if child.refs > node.refs and node is not self.root:
                    raise RadixCacheError(f"block {child.key!r} held more than its parent")
                stack.append(child)
        if (count, unheld) != (self.nodes, self.unheld_nodes):
            raise RadixCacheError(f"tree has {count} nodes ({unheld} unheld), counts say "
                                  f"{self.nodes} ({self.unheld_nodes})")
        if self.capacity_blocks is not None and self.blocks > self.capacity_blocks:
            raise RadixCacheError(f"{self.blocks} blocks cached over a capacity of "
                                  f"{self.capacity_blocks}")
