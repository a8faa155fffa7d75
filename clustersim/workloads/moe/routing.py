"""MoE token routing as data: which experts each token visits in each layer, from a seeded model.

Fidelity: statistical (a generative model of router decisions, not a trained router). A
:class:`RoutingSpec` describes

* the popularity of experts per layer: ``uniform``; ``zipf`` with exponent ``zipf_s`` (expert of
  popularity rank r gets weight 1/(r+1)^s, the skew MoE papers measure: a few hot experts take
  most tokens, Tutel section 2, MoETuner figure 2); or a ``trace`` of (layer, expert, tokens)
  counts from CSV (see :func:`read_routing_trace`);
* per-layer ``drift``: which experts are hot changes from layer to layer (the popularity ranking
  of layer l+1 is layer l's with ``round(drift x E)`` random transpositions; 0 keeps one
  ranking for all layers, 1 reshuffles it almost entirely);
* inter-layer ``affinity`` (ExFlow, Yao et al. 2024; MoETuner, Go et al. 2025): a token that
  chose expert i in layer l picks its experts in layer l+1 from a small preferred set S_i (of
  ``affinity_set`` experts) with probability ``affinity``, else from the layer's popularity:
  P(j | i) = (1 - a) p_{l+1}(j) + a [j in S_i] / |S_i|.

Each token draws ``top_k`` distinct experts per layer, without replacement in proportion to
those weights (sequential alias-table draws, a repeat redrawn: Plackett-Luce sampling); its
first pick is its *primary*
expert, the one that conditions the next layer. Everything comes from the run's seeded numpy
Generator: the same seed gives the same routing.

Capacity (GShard, Lepikhin et al. 2021; Megatron-Core ``moe_expert_capacity_factor``): with a
capacity factor c, each source rank sends an expert at most ceil(c x tokens x top_k / E) tokens
and drops the rest (Megatron drops per rank, before dispatch); ``capacity_factor=None`` is
dropless.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clustersim.errors import ConfigError

DISTRIBUTIONS = ("uniform", "zipf", "trace")
MAX_ZIPF_S = 4.0  # beyond this one expert takes nearly every token; refuse as a likely typo


@dataclass(frozen=True)
class RoutingSpec:
    """How tokens choose experts (see the module docstring for the model)."""

    num_experts: int
    top_k: int
    distribution: str = "uniform"
    zipf_s: float = 0.0
    drift: float = 0.0
    affinity: float = 0.0
    affinity_set: int | None = None          # preferred experts per expert; default top_k
    capacity_factor: float | None = None     # None: dropless
    trace: tuple[tuple[float, ...], ...] | None = None  # [layer][expert] token counts

    def __post_init__(self) -> None:
        check_routing(self)

    @property
    def preferred(self) -> int:
        return self.affinity_set if self.affinity_set is not None else self.top_k


def check_routing(spec: RoutingSpec, key: str = "workload.moe") -> None:
    """One clear error per bad field, naming its key."""
    e, k = spec.num_experts, spec.top_k
    if e < 1 or k < 1:
        raise ConfigError(f"num_experts and top_k must be >= 1, got {e} and {k}", key=key)
    if k > e:
        raise ConfigError(f"top_k={k} exceeds the {e} experts; choose top_k <= {e}",
                          key=f"{key}.top_k")
    if spec.distribution not in DISTRIBUTIONS:
        raise ConfigError(f"distribution must be one of {DISTRIBUTIONS}, got "
                          f"{spec.distribution!r}", key=f"{key}.distribution")
    if not 0.0 <= spec.zipf_s <= MAX_ZIPF_S:
        raise ConfigError(f"zipf_s (skew) must be in [0, {MAX_ZIPF_S}], got {spec.zipf_s}",
                          key=f"{key}.zipf_s")
    for name in ("drift", "affinity"):
        value = getattr(spec, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value}", key=f"{key}.{name}")
    if not k <= spec.preferred <= e:
        raise ConfigError(f"affinity_set must be between top_k={k} and num_experts={e}, got "
                          f"{spec.preferred}", key=f"{key}.affinity_set")
    if spec.capacity_factor is not None and spec.capacity_factor <= 0:
        raise ConfigError(f"capacity_factor must be > 0 (or null for dropless), got "
                          f"{spec.capacity_factor}", key=f"{key}.capacity_factor")
    if spec.distribution == "trace" and not spec.trace:
        raise ConfigError("distribution 'trace' needs a routing trace (trace: FILE.csv)",
                          key=f"{key}.trace")


# --- routing traces ------------------------------------------------------------------------------

def read_routing_trace(path: str | Path, *, num_layers: int, num_experts: int,
                       key: str = "workload.moe.trace") -> tuple[tuple[float, ...], ...]:
    """Token counts per (layer, expert) from a CSV with header ``layer,expert,tokens``.

    Rows of one (layer, expert) add up; a layer with no rows is an error, an expert of a listed
    layer with no row gets 0 tokens. Every error names the file and the CSV line.
    """
    counts = np.zeros((num_layers, num_experts))
    seen = set()
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read routing trace {path}: {exc.strerror}", key=key) from None
    with handle:
        reader = csv.reader(handle)
        header = [c.strip().lower() for c in next(reader, [])]
        if header[:3] != ["layer", "expert", "tokens"]:
            raise ConfigError(f"{path} line 1: expected the header 'layer,expert,tokens', got "
                              f"{','.join(header)!r}", key=key)
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                layer, expert, tokens = int(row[0]), int(row[1]), float(row[2])
            except (ValueError, IndexError):
                raise ConfigError(f"{path} line {line}: expected integers layer, expert and a "
                                  f"token count, got {','.join(row)!r}", key=key) from None
            if not 0 <= layer < num_layers:
                raise ConfigError(f"{path} line {line}: layer {layer} is not one of the model's "
                                  f"layers 0..{num_layers - 1}", key=key)
            if not 0 <= expert < num_experts:
                raise ConfigError(f"{path} line {line}: expert {expert} is not one of the "
                                  f"experts 0..{num_experts - 1}", key=key)
            if not tokens >= 0 or math.isinf(tokens):
                raise ConfigError(f"{path} line {line}: token count must be a finite number "
                                  f">= 0, got {row[2]!r}", key=key)
            counts[layer, expert] += tokens
            seen.add(layer)
    for layer in range(num_layers):
        if layer not in seen or counts[layer].sum() <= 0:
            raise ConfigError(f"{path}: layer {layer} has no tokens; the trace must give counts "
                              f"for every layer 0..{num_layers - 1}", key=key)
    return tuple(tuple(float(c) for c in row) for row in counts)


# --- the generative model ------------------------------------------------------------------

def zipf_weights(num_experts: int, s: float) -> np.ndarray:
    """Normalised 1/(r+1)^s over popularity ranks r = 0..E-1."""
    w = 1.0 / np.arange(1, num_experts + 1, dtype=float) ** s
    return w / w.sum()


def layer_popularity(spec: RoutingSpec, num_layers: int, rng: np.random.Generator) -> np.ndarray:
    """[layer, expert] probabilities of being chosen (before affinity)."""
    e = spec.num_experts
    if spec.distribution == "trace":
        counts = np.asarray(spec.trace, dtype=float)
        if counts.shape != (num_layers, e):
            raise ConfigError(f"the routing trace has {counts.shape[0]} layers x "
                              f"{counts.shape[1]} experts, the model {num_layers} x {e}",
                              key="workload.moe.trace")
        return counts / counts.sum(axis=1, keepdims=True)
    ranked = zipf_weights(e, spec.zipf_s if spec.distribution == "zipf" else 0.0)
    order = rng.permutation(e)   # order[r] = the expert at popularity rank r
    swaps = round(spec.drift * e)
    out = np.empty((num_layers, e))
    for layer in range(num_layers):
        if layer and swaps:
            for _ in range(swaps):
                a, b = rng.integers(0, e, size=2)
                order[a], order[b] = order[b], order[a]
        out[layer, order] = ranked
    return out


def preferred_sets(spec: RoutingSpec, num_layers: int, rng: np.random.Generator) -> np.ndarray:
    """[layer gap, expert, m]: the experts of layer l+1 that expert i of layer l prefers."""
    e, m = spec.num_experts, spec.preferred
    sets = np.empty((max(num_layers - 1, 0), e, m), dtype=np.int64)
    for gap in range(num_layers - 1):
        for i in range(e):
            sets[gap, i] = rng.choice(e, size=m, replace=False)
    return sets


def transition_matrices(spec: RoutingSpec, popularity: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """[layer gap, i, j] = P(token picks j in layer l+1 | its primary expert in layer l is i)."""
    gaps, e, m = sets.shape
    a = spec.affinity
    out = np.empty((gaps, e, e))
    for gap in range(gaps):
        t = np.repeat((1.0 - a) * popularity[gap + 1][None, :], e, axis=0)
        np.add.at(t, (np.repeat(np.arange(e), m), sets[gap].ravel()), a / m)
        out[gap] = t
    return out


@dataclass(frozen=True)
class RoutingModel:
    """A drawn routing model: popularity per layer and transitions between layers."""

    spec: RoutingSpec
    popularity: np.ndarray    # [L, E]
    transitions: np.ndarray   # [L-1, E, E]

    @property
    def num_layers(self) -> int:
        return self.popularity.shape[0]

    @functools.cached_property
    def _tables(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Alias tables of the first layer's popularity and of every transition matrix."""
        return [alias_tables(self.popularity[:1])] + [alias_tables(t) for t in self.transitions]

    def sample(self, tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Expert choices [tokens, layers, top_k] of ``tokens`` tokens (int16 expert ids).

        Pick j of a token is drawn from its row's distribution and redrawn while it repeats one
        of its earlier picks: sequential sampling without replacement (Plackett-Luce). Draws use
        Walker's alias tables, O(1) each.
        """
        k = self.spec.top_k
        out = np.empty((tokens, self.num_layers, k), dtype=np.int16)
        tables = self._tables
        for layer in range(self.num_layers):
            rows = np.zeros(tokens, dtype=np.int64) if layer == 0 else \
                out[:, layer - 1, 0].astype(np.int64)
            prob, alias = tables[layer]
            picks = out[:, layer]
            for j in range(k):
                todo = np.arange(tokens)
                while len(todo):
                    draw = _draw(prob, alias, rows[todo], rng)
                    picks[todo, j] = draw
                    if not j:
                        break
                    todo = todo[(picks[todo, :j] == draw[:, None]).any(axis=1)]
        return out


def alias_tables(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias tables, one row per distribution: (keep probability, alias)."""
    prob = np.asarray(prob, dtype=float)
    rows, e = prob.shape
    keep = np.ones((rows, e))
    alias = np.tile(np.arange(e), (rows, 1))
    for r in range(rows):
        scaled = prob[r] / prob[r].sum() * e
        small = [i for i in range(e) if scaled[i] < 1.0]
        large = [i for i in range(e) if scaled[i] >= 1.0]
        while small and large:
            s, l = small.pop(), large.pop()
            keep[r, s], alias[r, s] = scaled[s], l
            scaled[l] -= 1.0 - scaled[s]
            (small if scaled[l] < 1.0 else large).append(l)
    return keep, alias


def _draw(keep: np.ndarray, alias: np.ndarray, rows: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    e = keep.shape[1]
    column = rng.integers(0, e, size=len(rows))
    take = rng.random(len(rows)) < keep[rows, column]
    return np.where(take, column, alias[rows, column]).astype(np.int16)


def expected_counts(popularity: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """[layer, expert] integer tokens in proportion to popularity (largest remainder), summing to
    tokens x top_k per layer: the noise-free "mean-field" routing. No expert gets more than
    ``tokens`` (a token visits an expert at most once): the excess goes to the next experts."""
    out = np.zeros(popularity.shape, dtype=np.int64)
    for layer, p in enumerate(popularity):
        share = np.minimum(p * tokens * top_k, tokens)
        base = np.floor(share).astype(np.int64)
        missing = tokens * top_k - int(base.sum())
        order = np.argsort(-(share - base), kind="stable")
        for e in order:
            if missing <= 0:
                break
            if base[e] < tokens:
                base[e] += 1
                missing -= 1
        out[layer] = base
    return out


def routing_model(spec: RoutingSpec, num_layers: int, rng: np.random.Generator) -> RoutingModel:
    popularity = layer_popularity(spec, num_layers, rng)
    sets = preferred_sets(spec, num_layers, rng) if spec.affinity > 0 else \
        np.zeros((max(num_layers - 1, 0), spec.num_experts, spec.preferred), dtype=np.int64)
    return RoutingModel(spec, popularity, transition_matrices(spec, popularity, sets))


# --- counts derived from sampled choices -----------------------------------------------------

def expert_counts(choices: np.ndarray, num_experts: int) -> np.ndarray:
    """[layer, expert] tokens routed (each token counts once per expert it picked)."""
    tokens, layers, k = choices.shape
    out = np.zeros((layers, num_experts), dtype=np.int64)
    for layer in range(layers):
        out[layer] = np.bincount(choices[:, layer].ravel(), minlength=num_experts)
    return out


def affinity_counts(choices: np.ndarray, num_experts: int) -> np.ndarray:
    """[layer gap, i, j]: tokens whose primary expert is i in layer l and that pick j in l+1."""
    tokens, layers, k = choices.shape
    out = np.zeros((max(layers - 1, 0), num_experts, num_experts), dtype=np.int64)
    for gap in range(layers - 1):
        src = np.repeat(choices[:, gap, 0], k)
        dst = choices[:, gap + 1].ravel()
        np.add.at(out[gap], (src, dst), 1)
    return out


def capacity_per_expert(tokens: int, top_k: int, num_experts: int,
                        capacity_factor: float | None) -> int | None:
    """Megatron-Core's per-rank capacity: ceil(tokens x top_k / E x capacity_factor)."""
    if capacity_factor is None:
        return None
    return math.ceil(tokens * top_k / num_experts * capacity_factor)


def apply_capacity(counts: np.ndarray, capacity: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped) per entry of ``counts`` (source rank x expert) under ``capacity``."""
    counts = np.asarray(counts, dtype=np.int64)
    if capacity is None:
        return counts.copy(), np.zeros_like(counts)
    kept = np.minimum(counts, capacity)
    return kept, counts - kept
