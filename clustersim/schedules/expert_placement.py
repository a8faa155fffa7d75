"""Expert placement: which devices of an expert-parallel group hold each expert of each layer.

Pure functions of data (expected tokens per expert, inter-layer affinity counts), like the
pipeline schedules: no time, no hardware. A placement is an :class:`ExpertPlacement`, the
replica devices of every (layer, expert); an expert's tokens are split evenly over its replicas.

Strategies:

* ``round_robin``: expert e on device e mod D (DeepSpeed-MoE / Tutel's default striping).
* ``contiguous``: experts [r E/D, (r+1) E/D) on rank r (Megatron-Core's default).
* ``load_balanced``: per layer, experts by decreasing expected load, each onto the least loaded
  device with a free slot (LPT greedy, Graham 1969); every device holds E/D experts.
* ``affinity_aware``: MoETuner-style integer program (Go et al. 2025; ExFlow, Yao et al. 2024):
  minimise the tokens that change device between consecutive layers (weighted more when they
  change node) plus ``balance_weight`` x the busiest device's load per layer, every device
  holding E/D experts per layer. Solved with scipy's ``milp`` (HiGHS); above ``max_binaries``
  binary variables (default 2048: L x E x D) a greedy layer-by-layer assignment is used instead.
  The result is never worse on :func:`placement_cost` than round robin or the balanced greedy:
  all candidates are scored and the best returned.
* ``replicate_hot``: given spare slots per device, copies the experts with the highest load per
  replica onto the least loaded devices that lack them (FasterMoE's shadowing, Lina's replicas).

Objective (:func:`placement_cost`), with A_l[i, j] the tokens whose primary expert in layer l is
i and that pick j in layer l+1::

    cost = sum_l sum_ij A_l[i,j] (cross_device(i,j) + node_weight cross_node(i,j))
           + balance_weight sum_l max_d load_l(d)

Affinity is the traffic that context-coherent expert parallelism (ExFlow) pays; round trips
home per layer (Megatron's dispatcher) depend only on load and the token sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("round_robin", "contiguous", "load_balanced", "affinity_aware")


@dataclass(frozen=True)
class ExpertPlacement:
    """``replicas[layer][expert]``: the devices (EP ranks) holding that expert, primary first."""

    name: str
    num_devices: int
    replicas: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def num_layers(self) -> int:
        return len(self.replicas)

    @property
    def num_experts(self) -> int:
        return len(self.replicas[0])

    def primary(self) -> np.ndarray:
        """[layer, expert] -> the first replica's device."""
        return np.array([[r[0] for r in layer] for layer in self.replicas], dtype=np.int64)

    def device_loads(self, loads: np.ndarray) -> np.ndarray:
        """[layer, device] tokens, each expert's load split evenly over its replicas."""
        out = np.zeros((self.num_layers, self.num_devices))
        for layer, experts in enumerate(self.replicas):
            for expert, devices in enumerate(experts):
                for d in devices:
                    out[layer, d] += loads[layer, expert] / len(devices)
        return out

    def experts_on(self, layer: int, device: int) -> list[int]:
        return [e for e, devs in enumerate(self.replicas[layer]) if device in devs]


def _from_primary(name: str, primary: np.ndarray, num_devices: int) -> ExpertPlacement:
    replicas = tuple(tuple((int(d),) for d in row) for row in primary)
    return ExpertPlacement(name, num_devices, replicas)


def _check(num_experts: int, num_devices: int) -> int:
    if num_devices < 1 or num_experts % num_devices:
        raise ValueError(f"expert placement needs the {num_experts} experts divisible by the "
                         f"{num_devices} devices of the expert-parallel group")
    return num_experts // num_devices


def round_robin(num_layers: int, num_experts: int, num_devices: int) -> ExpertPlacement:
    _check(num_experts, num_devices)
    row = np.arange(num_experts) % num_devices
    return _from_primary("round_robin", np.tile(row, (num_layers, 1)), num_devices)


def contiguous(num_layers: int, num_experts: int, num_devices: int) -> ExpertPlacement:
    per = _check(num_experts, num_devices)
    row = np.arange(num_experts) // per
    return _from_primary("contiguous", np.tile(row, (num_layers, 1)), num_devices)


def _lpt(loads: np.ndarray, num_devices: int, slots: int) -> np.ndarray:
    """Longest-processing-time greedy for one layer; ties to the lowest device index."""
    device_of = np.empty(len(loads), dtype=np.int64)
    total, free = np.zeros(num_devices), np.full(num_devices, slots)
    for expert in np.argsort(-loads, kind="stable"):
        candidates = np.flatnonzero(free > 0)
        d = candidates[np.argmin(total[candidates])]
        device_of[expert] = d
        total[d] += loads[expert]
        free[d] -= 1
    return device_of


def load_balanced(loads: np.ndarray, num_devices: int) -> ExpertPlacement:
    loads = np.asarray(loads, dtype=float)
    slots = _check(loads.shape[1], num_devices)
    primary = np.stack([_lpt(row, num_devices, slots) for row in loads])
    return _from_primary("load_balanced", primary, num_devices)


def placement_cost(placement: ExpertPlacement, loads: np.ndarray, affinity: np.ndarray, *,
                   devices_per_node: int, node_weight: float = 1.0,
                   balance_weight: float = 1.0) -> dict[str, float]:
    """Cross-device and cross-node affinity tokens, the busiest device's load, and the total."""
    primary = placement.primary()
    node = primary // devices_per_node
    cross_device = cross_node = 0.0
    for gap in range(len(affinity)):
        a = np.asarray(affinity[gap], dtype=float)
        cross_device += float((a * (primary[gap][:, None] != primary[gap + 1][None, :])).sum())
        cross_node += float((a * (node[gap][:, None] != node[gap + 1][None, :])).sum())
    max_load = float(placement.device_loads(np.asarray(loads, dtype=float)).max(axis=1).sum())
    return {"cross_device_tokens": cross_device, "cross_node_tokens": cross_node,
            "max_device_load": max_load,
            "objective": cross_device + node_weight * cross_node + balance_weight * max_load}


def _greedy_affinity(loads, affinity, num_devices, devices_per_node, node_weight,
                     balance_weight) -> np.ndarray:
    """Layer by layer: layer 0 balanced; then each expert (heaviest first) goes to the device
    that keeps most of its incoming affinity tokens, minus the balance penalty."""
    layers, experts = loads.shape
    slots = experts // num_devices
    primary = np.empty((layers, experts), dtype=np.int64)
    primary[0] = _lpt(loads[0], num_devices, slots)
    node_of = np.arange(num_devices) // devices_per_node
    for layer in range(1, layers):
        a = np.asarray(affinity[layer - 1], dtype=float)
        # incoming[j, d]: tokens reaching expert j from experts on device d in the previous layer
        onehot = np.zeros((experts, num_devices))
        onehot[np.arange(experts), primary[layer - 1]] = 1.0
        incoming = a.T @ onehot
        incoming_node = incoming @ (node_of[:, None] == np.arange(node_of.max() + 1)[None, :])
        gain = incoming + node_weight * incoming_node[:, node_of]
        total, free = np.zeros(num_devices), np.full(num_devices, slots)
        for expert in np.argsort(-loads[layer], kind="stable"):
            score = gain[expert] - balance_weight * np.maximum(
                total + loads[layer, expert] - total.max(), 0.0)
            score[free <= 0] = -np.inf
            d = int(np.argmax(score))
            primary[layer, expert] = d
            total[d] += loads[layer, expert]
            free[d] -= 1
    return primary


def _ilp_affinity(loads, affinity, num_devices, devices_per_node, node_weight, balance_weight,
                  time_limit_s, pairs_per_expert) -> np.ndarray | None:
    """The integer program; None when HiGHS finds no feasible solution in time."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    layers, experts = loads.shape
    d_n, slots = num_devices, experts // num_devices
    nodes = -(-d_n // devices_per_node)
    node_of = np.arange(d_n) // devices_per_node
    nx = layers * experts * d_n

    def x(l, e, d):
        return (l * experts + e) * d_n + d

    # Only each expert's heaviest successors get co-location variables (the rest of the
    # traffic is still scored when candidates are compared): keeps the program small.
    pairs = []
    for g in range(layers - 1):
        a = np.asarray(affinity[g], dtype=float)
        for i in range(experts):
            for j in np.argsort(-a[i], kind="stable")[:pairs_per_expert]:
                if a[i, j] > 0:
                    pairs.append((g, i, int(j), float(a[i, j])))
    n_w, n_v = len(pairs) * d_n, len(pairs) * nodes
    n_vars = nx + n_w + n_v + layers
    w0, v0, m0 = nx, nx + n_w, nx + n_w + n_v
    c = np.zeros(n_vars)
    for p, (_, _, _, a) in enumerate(pairs):
        c[w0 + p * d_n: w0 + (p + 1) * d_n] = -a                 # tokens kept on a device
        c[v0 + p * nodes: v0 + (p + 1) * nodes] = -a * node_weight  # ... or on a node
    c[m0:] = balance_weight
    rows = layers * experts + layers * d_n + 2 * n_w + 2 * n_v + layers * d_n
    a_mat = lil_matrix((rows, n_vars))
    lo, hi = np.full(rows, -np.inf), np.zeros(rows)
    r = 0
    for l in range(layers):
        for e in range(experts):          # each expert on exactly one device
            for d in range(d_n):
                a_mat[r, x(l, e, d)] = 1
            lo[r] = hi[r] = 1
            r += 1
        for d in range(d_n):              # each device holds E/D experts
            for e in range(experts):
                a_mat[r, x(l, e, d)] = 1
            lo[r] = hi[r] = slots
            r += 1
        for d in range(d_n):              # m_l >= load on d
            for e in range(experts):
                a_mat[r, x(l, e, d)] = loads[l, e]
            a_mat[r, m0 + l] = -1
            r += 1
    for p, (g, i, j, _) in enumerate(pairs):
        for d in range(d_n):              # w <= x_i,d and w <= x_j,d
            for l, e in ((g, i), (g + 1, j)):
                a_mat[r, w0 + p * d_n + d] = 1
                a_mat[r, x(l, e, d)] = -1
                r += 1
        for n in range(nodes):            # v <= sum_{d in n} x_i,d and likewise for j
            for l, e in ((g, i), (g + 1, j)):
                a_mat[r, v0 + p * nodes + n] = 1
                for d in np.flatnonzero(node_of == n):
                    a_mat[r, x(l, e, int(d))] = -1
                r += 1
    integrality = np.zeros(n_vars)
    integrality[:nx] = 1
    upper = np.ones(n_vars)
    upper[m0:] = np.inf
    sym = np.zeros(n_vars)
    sym[x(0, int(np.argmax(loads[0])), 0)] = 1     # devices are interchangeable: fix one
    result = milp(c, integrality=integrality, bounds=Bounds(sym, upper),
                  constraints=LinearConstraint(a_mat.tocsr(), lo, hi),
                  options={"time_limit": time_limit_s, "disp": False})
    if result.x is None:
        return None
    chosen = result.x[:nx].reshape(layers, experts, d_n)
    return np.argmax(chosen, axis=2)


def affinity_aware(loads: np.ndarray, affinity: np.ndarray, num_devices: int, *,
                   devices_per_node: int, node_weight: float = 1.0, balance_weight: float = 1.0,
                   max_binaries: int = 2048, time_limit_s: float = 5.0,
                   pairs_per_expert: int = 2) -> ExpertPlacement:
    """Minimise :func:`placement_cost` (ILP up to ``max_binaries`` binaries, else greedy)."""
    loads = np.asarray(loads, dtype=float)
    layers, experts = loads.shape
    _check(experts, num_devices)
    kw = dict(devices_per_node=devices_per_node, node_weight=node_weight,
              balance_weight=balance_weight)
    candidates = [round_robin(layers, experts, num_devices), load_balanced(loads, num_devices)]
    greedy = _greedy_affinity(loads, affinity, num_devices, devices_per_node, node_weight,
                              balance_weight)
    candidates.append(_from_primary("affinity_aware", greedy, num_devices))
    if layers * experts * num_devices <= max_binaries:
        solved = _ilp_affinity(loads, affinity, num_devices, devices_per_node, node_weight,
                               balance_weight, time_limit_s, pairs_per_expert)
        if solved is not None:
            candidates.append(_from_primary("affinity_aware", solved, num_devices))
    best = min(candidates, key=lambda p: placement_cost(p, loads, affinity, **kw)["objective"])
    return ExpertPlacement("affinity_aware", num_devices, best.replicas)


def replicate_hot(placement: ExpertPlacement, loads: np.ndarray,
                  extra_slots_per_device: int) -> ExpertPlacement:
    """Add replicas of the experts with the highest load per replica, each on the least loaded
    device with a spare slot that does not hold it yet, ``extra_slots_per_device`` per device."""
    if extra_slots_per_device < 0:
        raise ValueError(f"extra_slots_per_device must be >= 0, got {extra_slots_per_device}")
    loads = np.asarray(loads, dtype=float)
    layers_out = []
    for layer, experts in enumerate(placement.replicas):
        reps = [list(devs) for devs in experts]
        free = np.full(placement.num_devices, extra_slots_per_device)
        for _ in range(extra_slots_per_device * placement.num_devices):
            per_replica = np.array([loads[layer, e] / len(r) for e, r in enumerate(reps)])
            device_load = np.zeros(placement.num_devices)
            for e, r in enumerate(reps):
                for d in r:
                    device_load[d] += per_replica[e]
            placed = False
            for expert in np.argsort(-per_replica, kind="stable"):
                options = [d for d in np.argsort(device_load, kind="stable")
                           if free[d] > 0 and d not in reps[expert]]
                if options:
                    reps[expert].append(int(options[0]))
                    free[options[0]] -= 1
                    placed = True
                    break
            if not placed:
                break
        layers_out.append(tuple(tuple(r) for r in reps))
    return ExpertPlacement(f"{placement.name}+replicas", placement.num_devices, tuple(layers_out))


def make_placement(strategy: str, loads: np.ndarray, affinity: np.ndarray, num_devices: int, *,
                   devices_per_node: int, replicas_per_device: int = 0,
                   **options: float) -> ExpertPlacement:
    """A placement by strategy name, optionally with hot-expert replicas."""
    layers, experts = np.asarray(loads).shape
    if strategy == "round_robin":
        placement = round_robin(layers, experts, num_devices)
    elif strategy == "contiguous":
        placement = contiguous(layers, experts, num_devices)
    elif strategy == "load_balanced":
        placement = load_balanced(loads, num_devices)
    elif strategy == "affinity_aware":
        placement = affinity_aware(loads, affinity, num_devices,
                                   devices_per_node=devices_per_node, **options)
    else:
        raise ValueError(f"unknown expert placement {strategy!r}; expected one of {STRATEGIES}")
    if replicas_per_device:
        return replicate_hot(placement, loads, replicas_per_device)
    return placement
