"""The paged KV cache: bytes per token, how many blocks fit, and block accounting.

Bytes per token (whole model) = layers x KV heads x head dim x 2 (K and V) x dtype bytes, so
grouped-query attention counts right: LLaMA-2-70B (80 layers, 8 KV heads of 128) in bf16 holds
320 KiB per token, not the 2.5 MiB a full multi-head cache would. One GPU of a TP x PP replica
holds its stage's layers and ``ceil(kv_heads / tp)`` KV heads (heads are replicated when tp
exceeds them, as vLLM does).

Capacity per GPU = HBM x ``gpu_memory_utilization`` - weights - activation reserve (vLLM's
profile-then-allocate rule); the replica has as many blocks as its fullest GPU allows.

``BlockManager`` counts blocks (a block's identity never matters to timing): free blocks, blocks
held by sequences, shared-prefix blocks with a reference count, and, with prefix caching, prefix
blocks that no sequence holds any more, kept until evicted (least recently used first). Shared
prefixes come two ways: one level (a ``prefix_id`` naming a whole system prompt), or a radix tree
of hashed blocks (``radix_cache.RadixTree``, for traces with block hashes); when blocks run out,
unheld one-level prefixes are evicted before tree nodes. It also counts the host blocks of
swapped-out sequences. Invariant, checked by ``check()``:
``allocated - freed == total - free <= total``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from clustersim.errors import ClusterSimError
from clustersim.ops import dtype_bytes
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.serving.radix_cache import RadixTree


class KVCacheError(ClusterSimError):
    """The engine asked the block manager for something its accounting forbids (a bug)."""


def kv_bytes_per_token(model: ModelConfig, dtype: str = "bf16") -> float:
    """KV bytes of one token over the whole model."""
    return float(model.num_layers * model.num_kv_heads * model.head_dim * 2 * dtype_bytes(dtype))


def kv_heads_per_rank(model: ModelConfig, tp: int) -> int:
    return -(-model.num_kv_heads // tp)


def kv_bytes_per_token_per_gpu(model: ModelConfig, *, tp: int, pp: int,
                               dtype: str = "bf16") -> float:
    """KV bytes of one token on one GPU of a stage (layers / pp, KV heads / tp)."""
    layers = model.num_layers // pp
    return float(layers * kv_heads_per_rank(model, tp) * model.head_dim * 2 * dtype_bytes(dtype))


def weight_bytes_per_gpu(model: ModelConfig, *, tp: int, pp: int,
                         dtype: str = "bf16") -> list[float]:
    """Weights on one GPU of each pipeline stage (the first holds the embedding, the last the
    LM head)."""
    layers = model.num_layers // pp
    per_stage = []
    for stage in range(pp):
        total = layers * tfm.weight_bytes(model, part="layer", tp=tp, dtype=dtype)
        if stage == 0:
            total += tfm.weight_bytes(model, part="embedding", tp=tp, dtype=dtype)
        if stage == pp - 1:
            total += tfm.weight_bytes(model, part="lm_head", tp=tp, dtype=dtype)
        per_stage.append(float(total))
    return per_stage


def activation_reserve_bytes(model: ModelConfig, *, tp: int, max_batched_tokens: int,
                             max_num_seqs: int, dtype: str = "bf16") -> float:
    """Peak inference activations of one iteration on one GPU (vLLM profiles this with a dummy
    batch of ``max_batched_tokens``): the residual stream, the QKV and MLP intermediates of one
    layer (they are freed layer by layer), and fp32 logits of ``max_num_seqs`` sampled tokens."""
    eb = dtype_bytes(dtype)
    h = model.hidden_size
    qkv = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim // tp
    mlp = model.experts_per_token * (3 if model.gated_mlp else 2) * model.ffn_hidden_size // tp
    per_token = eb * (3 * h + qkv + mlp)
    logits = 4.0 * max_num_seqs * math.ceil(model.vocab_size / tp)
    return float(max_batched_tokens * per_token + logits)


@dataclass(frozen=True)
class KVLayout:
    """How one replica's HBM is shared between weights, activations and KV blocks."""

    block_size: int
    bytes_per_token: float               # whole model
    bytes_per_token_per_gpu: float       # one GPU of a stage
    hbm_bytes: float
    usable_bytes: float                  # hbm x gpu_memory_utilization
    weight_bytes_per_gpu: float          # the fullest stage
    activation_reserve_bytes: float
    blocks: int                          # KV blocks of the replica

    @property
    def block_bytes_per_gpu(self) -> float:
        return self.block_size * self.bytes_per_token_per_gpu

    @property
    def kv_bytes_per_gpu(self) -> float:
        return self.blocks * self.block_bytes_per_gpu

    @property
    def capacity_tokens(self) -> int:
        return self.blocks * self.block_size


def plan_layout(model: ModelConfig, *, hbm_bytes: float, tp: int, pp: int, block_size: int,
                dtype: str, kv_dtype: str, gpu_memory_utilization: float,
                activation_reserve: float, num_blocks: int | None = None) -> KVLayout:
    """Blocks that fit on every GPU of a replica; ``num_blocks`` overrides the computed count."""
    weights = max(weight_bytes_per_gpu(model, tp=tp, pp=pp, dtype=dtype))
    per_gpu = kv_bytes_per_token_per_gpu(model, tp=tp, pp=pp, dtype=kv_dtype)
    usable = hbm_bytes * gpu_memory_utilization
    free = usable - weights - activation_reserve
    blocks = num_blocks if num_blocks is not None else max(0, int(free // (block_size * per_gpu)))
    return KVLayout(block_size, kv_bytes_per_token(model, kv_dtype), per_gpu, hbm_bytes, usable,
                    weights, activation_reserve, blocks)


class ResidentGroups:
    """A read-only collection of resident prefix group ids (see ``resident_groups``)."""

    __slots__ = ("_level", "_roots")

    def __init__(self, level, roots):
        self._level, self._roots = level, roots

    def __contains__(self, group: int) -> bool:
        return group in self._level if group >= 0 else -2 - group in self._roots

    def __iter__(self):
        yield from self._level
        for key in self._roots:
            yield -2 - key

    def __len__(self) -> int:
        return len(self._level) + len(self._roots)

    def among(self, waiting) -> list[int]:
        """The resident groups that have requests in ``waiting`` (group id -> requests): the
        one-level ones in cache order, then the radix branches in waiting order."""
        level = [pid for pid in self._level if pid in waiting]
        return level + [pid for pid in waiting if pid <= -2 and -2 - pid in self._roots]


class BlockManager:
    """KV block accounting of one engine (see the module docstring)."""

    __slots__ = ("total", "free", "watermark", "prefix_caching", "host_total", "host_free",
                 "allocated_total", "freed_total", "evicted_total", "_prefixes", "_evictable",
                 "_level_evictable", "prefix_hits", "prefix_misses", "swapped_out_total",
                 "swapped_in_total", "pinned", "tree")

    def __init__(self, total_blocks: int, *, watermark_blocks: int = 0, prefix_caching: bool = True,
                 host_blocks: int = 0, node_blocks: int = 0):
        if total_blocks <= 0:
            raise ValueError(f"a KV cache needs at least one block, got {total_blocks}")
        self.total = self.free = int(total_blocks)
        self.watermark = int(watermark_blocks)
        self.prefix_caching = prefix_caching
        self.host_total = self.host_free = int(host_blocks)
        self.allocated_total = self.freed_total = self.evicted_total = 0
        self.swapped_out_total = self.swapped_in_total = 0
        self._prefixes: dict[int, list[int]] = {}              # id -> [blocks, refs]
        self._evictable: OrderedDict[int, int] = OrderedDict()  # id -> blocks, LRU first
        self._level_evictable = 0
        self.pinned: dict[int, int] = {}                       # id -> blocks, held prefixes
        self.prefix_hits = self.prefix_misses = 0
        # Hashed-block prefixes (traces with hash ids): ``node_blocks`` KV blocks per hash.
        self.tree = RadixTree(node_blocks) if node_blocks else None

    # -- views ------------------------------------------------------------------------------
    @property
    def evictable_blocks(self) -> int:
        """Cached prefix blocks no sequence holds (evicted on demand)."""
        tree = self.tree
        return self._level_evictable + (tree.unheld_nodes * tree.node_blocks if tree else 0)

    @property
    def used(self) -> int:
        """Blocks not free: held by sequences, plus cached prefixes nobody holds."""
        return self.total - self.free

    @property
    def held(self) -> int:
        """Blocks held by sequences (the KV actually in use)."""
        return self.total - self.free - self.evictable_blocks

    @property
    def available(self) -> int:
        """Blocks an allocation can get: free ones plus evictable cached prefixes."""
        return self.free + self.evictable_blocks

    @property
    def resident(self) -> dict[int, list[int]]:
        """Resident prefixes (held or evictable): id -> [blocks, refs]. Read only."""
        return self._prefixes

    def is_cached(self, prefix_id: int) -> bool:
        return prefix_id in self._prefixes

    # -- blocks -----------------------------------------------------------------------------
    def allocate(self, blocks: int) -> None:
        if blocks <= 0:
            return
        if blocks > self.free:
            self._evict(blocks - self.free)
            if blocks > self.free:
                raise KVCacheError(f"allocate {blocks} KV blocks with {self.free} free "
                                   f"({self.evictable_blocks} evictable) of {self.total}")
        self.free -= blocks
        self.allocated_total += blocks

    def release(self, blocks: int) -> None:
        if blocks <= 0:
            return
        if self.free + blocks > self.total:
            raise KVCacheError(f"release {blocks} KV blocks with only {self.used} in use")
        self.free += blocks
        self.freed_total += blocks

    def _evict(self, blocks: int) -> None:
        while blocks > 0 and self._evictable:
            pid, count = self._evictable.popitem(last=False)
            del self._prefixes[pid]
            self._level_evictable -= count
            self.evicted_total += count
            self.release(count)
            blocks -= count
        if blocks > 0 and self.tree is not None:
            freed = self.tree.evict(blocks)
            self.evicted_total += freed
            self.release(freed)

    # -- shared prefixes --------------------------------------------------------------------
    def acquire_prefix(self, prefix_id: int, blocks: int) -> bool:
        """Hold ``blocks`` prefix blocks of ``prefix_id``; True when they were already resident
        (a hit: nothing to compute), False when they were allocated now."""
        entry = self._prefixes.get(prefix_id)
        if entry is not None:
            if entry[1] == 0:
                self._level_evictable -= self._evictable.pop(prefix_id)
                self.pinned[prefix_id] = entry[0]
            entry[1] += 1
            self.prefix_hits += 1
            return True
        self.allocate(blocks)
        self._prefixes[prefix_id] = [blocks, 1]
        self.pinned[prefix_id] = blocks
        self.prefix_misses += 1
        return False

    def release_prefix(self, prefix_id: int) -> None:
        entry = self._prefixes[prefix_id]
        entry[1] -= 1
        if entry[1]:
            return
        del self.pinned[prefix_id]
        if self.prefix_caching:
            self._evictable[prefix_id] = entry[0]
            self._level_evictable += entry[0]
        else:
            del self._prefixes[prefix_id]
            self.release(entry[0])

    def resident_groups(self):
        """Resident prefix groups as a policy sees them: one-level prefix ids, and ``-2 - hash``
        for the first block of every cached radix-tree branch."""
        return ResidentGroups(self._prefixes, self.tree.root.children if self.tree else {})

    # -- hashed-block prefixes (radix tree) ---------------------------------------------------
    def match_path(self, hashes) -> tuple[int, int]:
        """(resident, held) blocks of the longest cached prefix of a hash path."""
        tree = self.tree
        resident, held = tree.match(hashes)
        return resident * tree.node_blocks, held * tree.node_blocks

    def acquire_path(self, hashes) -> int:
        """Hold a hash path's blocks (allocating the missing nodes); returns the blocks that
        were resident already (a hit: nothing to compute)."""
        tree = self.tree
        hits = tree.acquire(hashes, self.allocate)
        self.prefix_hits += hits
        self.prefix_misses += len(hashes) - hits
        return hits * tree.node_blocks

    def release_path(self, hashes) -> None:
        self.tree.release(hashes)
        if not self.prefix_caching:
            freed = self.tree.evict(self.tree.blocks)
            self.release(freed)

    # -- swapping ---------------------------------------------------------------------------
    def can_swap_out(self, blocks: int) -> bool:
        return blocks <= self.host_free

    def swap_out(self, blocks: int, freed: int | None = None) -> None:
        """Copy ``blocks`` to host memory and free ``freed`` of them on the GPU (default all;
        fewer when some are shared-prefix blocks, released by reference instead)."""
        if blocks > self.host_free:
            raise KVCacheError(f"swap out {blocks} blocks with {self.host_free} host blocks free")
        self.host_free -= blocks
        self.swapped_out_total += blocks
        self.release(blocks if freed is None else freed)

    def swap_in(self, blocks: int) -> None:
        self.allocate(blocks)
        self.host_free += blocks
        self.swapped_in_total += blocks

    def check(self) -> None:
        """Raise KVCacheError unless the counts are consistent (used by tests and at run end)."""
        problems = []
        if not 0 <= self.free <= self.total:
            problems.append(f"free {self.free} outside [0, {self.total}]")
        if self.allocated_total - self.freed_total != self.used:
            problems.append(f"allocated {self.allocated_total} - freed {self.freed_total} != "
                            f"in use {self.used}")
        prefix_blocks = sum(entry[0] for entry in self._prefixes.values())
        if prefix_blocks > self.used:
            problems.append(f"prefix blocks {prefix_blocks} exceed blocks in use {self.used}")
        if self.pinned != {pid: e[0] for pid, e in self._prefixes.items() if e[1]}:
            problems.append("held-prefix table out of step with the reference counts")
        if self._level_evictable != sum(self._evictable.values()):
            problems.append("evictable count out of step with the evictable prefixes")
        if self.tree is not None:
            self.tree.check()
            if prefix_blocks + self.tree.blocks > self.used:
                problems.append(f"radix-tree blocks {self.tree.blocks} and prefix blocks "
                                f"{prefix_blocks} exceed blocks in use {self.used}")
        if not 0 <= self.host_free <= self.host_total:
            problems.append(f"host blocks free {self.host_free} outside [0, {self.host_total}]")
        if problems:
            raise KVCacheError("KV block accounting broken: " + "; ".join(problems))
