"""NCCL's own cost model of its collectives: algorithms x protocols, and the pick it makes.

Fidelity: analytical. This is the tuning model NCCL evaluates at run time to choose an algorithm
and a protocol for each collective (NVIDIA/nccl ``src/graph/tuning.cc``, ``ncclTopoTuneModel``
and ``ncclTopoGetAlgoTime``; constants as of commit 5067397, 2026-06, NCCL 2.2x), reproduced
term by term:

    time_us(coll, algo, proto, nBytes) = latency_us * numPipeOps + nBytes / (1000 * busBw_GBps)

* ``busBw`` starts from the topology search result, ``channels x bw_per_channel`` (GB/s), and is
  refined per (algo, proto): LL halves it and caps it at ``llMaxBw``; LL128 keeps 92 %
  (120/128) up to a per-channel cap; tree all-reduce keeps 92 % up to ``perChMaxTreeBw`` per
  channel, LL divides by 3.8, LL128 keeps 7/9 inside a node; NVLS (NVSwitch multicast, Hopper
  and later) runs at ``nvlsEfficiency x (channels - 1)/channels`` of its graph bandwidth, twice
  for all-reduce; it is then converted from bus to algorithm bandwidth (ring and NVLS:
  ``nRanks / nsteps``, tree and CollNet: 1/2);
* ``latency`` is the algorithm/protocol base latency plus hardware latencies per step: a ring
  pays ``nsteps`` of them (``2(n-1)`` for all-reduce), a tree ``2 (ranks per node - 1)`` inside
  the node and ``2 log2(nodes)`` across, NVLS one;
* tree all-reduce bandwidth is scaled by NCCL's measured correction factor per power-of-two size.

NCCL runs the (algo, proto) with the smallest estimate: :meth:`NcclModel.choose`. The topology
search result (channels and per-channel bandwidth of the ring/tree graph and of the NVLS graph)
is input here (``NcclGraph``), as are the corrections a calibration fits to measured times
(NCCL's model is built to rank choices, not to predict times; ``NcclFit``): per-protocol latency
and bandwidth scales, an NVLS bandwidth scale, and one term NCCL's model leaves out: NVLS moves
its message in chunks that NCCL shrinks from 128 KiB to 16 KiB for smaller messages
(``src/enqueue.cc``), each with a fixed cost, so NVLS bandwidth keeps rising up to 1 GiB. The
constants (tuning.cc, topo.h, enqueue.cc) are in ``nccl_constants.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from clustersim.hardware.network.nccl_constants import (  # noqa: F401  (re-exported)
    ALGORITHMS, ARCHS, BASE_LATENCY_US, COLLECTIVES, HW_LATENCY_US, LL_MAX_BW, NCCL_NVLINK_GBPS,
    NVLINK_LINE_GBPS_PER_LINK, NVLS_EFFICIENCY, NVLS_MAX_CHUNK_BYTES, PER_CH_MAX_NVLS_TREE_BW,
    PER_CH_MAX_RING_LL128_BW, PER_CH_MAX_TREE_BW, PER_CH_MAX_TREE_LL128_BW, PROTOCOLS,
    TREE_CORRECTION, graph_budget_gbps, nvls_chunk_bytes)


def _log2i(value: int) -> int:
    return value.bit_length() - 1 if value > 0 else -1


@dataclass(frozen=True)
class NcclGraph:
    """What NCCL's topology search found for a communicator (its ``NCCL_DEBUG=INFO`` log shows
    these): channels and per-channel bandwidth of the ring/tree graphs and of the NVLS graph."""

    arch: str = "hopper"
    ranks: int = 8
    nodes: int = 1
    intra_hw: str = "nvlink"              # nvlink | pci
    channels: int = 16
    bw_intra_gbps: float = 20.0           # per channel, GB/s (graph->bwIntra)
    bw_inter_gbps: float = 12.0           # per channel, GB/s across nodes (graph->bwInter)
    latency_inter_us: float = 0.0         # graph->latencyInter
    nvls_channels: int = 0                # 0: no NVLS (no NVSwitch multicast, or pre-Hopper)
    nvls_bw_intra_gbps: float = 0.0
    collnet: bool = False
    net_overhead_us: float = 1.0          # getNetOverhead: x86 Intel 1 us, AMD 2 us

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"NcclGraph.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.intra_hw not in ("nvlink", "pci"):
            raise ValueError(f"NcclGraph.intra_hw must be nvlink or pci, got {self.intra_hw!r}")
        if self.ranks < 1 or self.nodes < 1 or self.ranks % self.nodes:
            raise ValueError(f"NcclGraph: ranks ({self.ranks}) must be a positive multiple of "
                             f"nodes ({self.nodes})")
        if self.channels < 1 or not self.bw_intra_gbps > 0:
            raise ValueError("NcclGraph: channels >= 1 and bw_intra_gbps > 0 expected")


@dataclass(frozen=True)
class NcclFit:
    """Corrections from measured times to NCCL's estimate (the defaults: NCCL's own).

    ``latency_scale`` / ``bandwidth_scale`` per protocol (LL, LL128, Simple) for the ring and tree
    algorithms. NVLS (Simple only) moves data through the NVSwitch's multicast and reduction
    engines, not around the ring's links, so it has its own ``nvls_bandwidth_scale`` and a fixed
    cost per chunk, ``nvls_chunk_overhead_bytes`` (in bytes of the chunk's bandwidth): NCCL shrinks
    NVLS chunks from 128 KiB down to 16 KiB for smaller messages (:func:`nvls_chunk_bytes`), and a
    chunk of ``c`` bytes then moves at ``c / (c + overhead)`` of the NVLS bandwidth. NCCL's tuning
    model ignores this, which is why NVLS bus bandwidth keeps rising up to 1 GiB in measurements
    (8x H200: 346 GB/s at 64 MiB, 464 at 1 GiB, stas00/ml-engineering all-reduce-8xH200.md)."""

    latency_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)     # LL, LL128, Simple
    bandwidth_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    nvls_bandwidth_scale: float = 1.0
    nvls_chunk_overhead_bytes: float = 0.0

    def __post_init__(self) -> None:
        scales = (*self.latency_scale, *self.bandwidth_scale, self.nvls_bandwidth_scale)
        if len(self.latency_scale) != 3 or len(self.bandwidth_scale) != 3 or not all(
                x > 0 for x in scales):
            raise ValueError("NcclFit: three positive latency and bandwidth scales expected "
                             f"(LL, LL128, Simple) and a positive NVLS scale, got {self}")
        if not self.nvls_chunk_overhead_bytes >= 0:
            raise ValueError("NcclFit.nvls_chunk_overhead_bytes must be >= 0, got "
                             f"{self.nvls_chunk_overhead_bytes}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "NcclFit":
        scalars = ("nvls_bandwidth_scale", "nvls_chunk_overhead_bytes")
        return cls(**{k: (float(v) if k in scalars else tuple(float(x) for x in v))
                      for k, v in raw.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"latency_scale": [float(x) for x in self.latency_scale],
                "bandwidth_scale": [float(x) for x in self.bandwidth_scale],
                "nvls_bandwidth_scale": float(self.nvls_bandwidth_scale),
                "nvls_chunk_overhead_bytes": float(self.nvls_chunk_overhead_bytes)}


@dataclass(frozen=True)
class NcclModel:
    graph: NcclGraph
    fit: NcclFit = field(default_factory=NcclFit)

    # -- ncclTopoTuneModel -----------------------------------------------------------------------
    def _nsteps(self, coll: str) -> int:
        n = self.graph.ranks
        return 2 * (n - 1) if coll == "all_reduce" else (
            n - 1 if coll in ("reduce_scatter", "all_gather") else n)

    def enabled(self, coll: str, algo: str, proto: str) -> bool:
        g = self.graph
        if coll not in COLLECTIVES:
            raise ValueError(f"NCCL model: unknown collective {coll!r}; expected one of {COLLECTIVES}")
        if coll in ("broadcast", "reduce") and algo != "ring":
            return False
        if coll in ("reduce_scatter", "all_gather") and algo not in ("ring", "nvls", "collnet_direct"):
            return False
        if algo in ("nvls", "nvls_tree") and proto != "Simple":
            return False
        if algo in ("collnet_direct", "collnet_chain") and (proto != "Simple" or not g.collnet):
            return False
        if algo in ("nvls", "nvls_tree") and g.nvls_channels < 2:
            return False
        if algo == "nvls_tree" and g.nodes == 1:
            return False
        if algo == "nvls" and g.nodes > 1 and not g.collnet:
            return False
        if algo == "nvls" and coll != "all_reduce" and g.ranks // g.nodes > 32:
            return False
        return True

    def bus_bandwidth_gbps(self, coll: str, algo: str, proto: str) -> float:
        """``comm->bandwidths[coll][algo][proto]`` (algorithm bandwidth, GB/s); 0 if disabled."""
        if not self.enabled(coll, algo, proto):
            return 0.0
        g = self.graph
        cc = ARCHS.index(g.arch)
        i2 = min(g.nodes, 3) - 1
        ll_max = LL_MAX_BW[cc][i2] if g.nodes == 1 else LL_MAX_BW[0][i2]   # Intel CPU row
        ppn = g.ranks / g.nodes
        channels, bw = g.channels, g.bw_intra_gbps if g.nodes <= 2 or algo.startswith("collnet") \
            else g.bw_inter_gbps
        if algo in ("nvls", "nvls_tree"):
            channels = g.nvls_channels
            intra = g.nvls_bw_intra_gbps * NVLS_EFFICIENCY[cc] * (channels - 1) / channels
            intra *= 2.0 if coll == "all_reduce" else (ppn - 1) / ppn
            inter = g.bw_inter_gbps * (2 if g.nodes <= 2 and algo == "nvls_tree" else 1)
            bw = min(intra, inter if g.nodes > 1 else math.inf,
                     PER_CH_MAX_NVLS_TREE_BW[cc][i2] if algo == "nvls_tree" else math.inf)
        bus = channels * bw
        if algo == "ring" and proto == "LL":
            bus = min(ll_max, bus * 0.5)
        if algo == "ring" and proto == "LL128":
            bus = min(bus * 0.92, channels * PER_CH_MAX_RING_LL128_BW[cc][i2])
        if algo == "tree" and coll == "all_reduce":
            bus = min(bus * 0.92, channels * PER_CH_MAX_TREE_BW[cc][i2])
        if algo == "tree" and proto == "LL":
            bus = min(bus / 3.8, ll_max)
        if algo == "tree" and proto == "LL128":
            bus = min(bus * (7.0 / 9.0 if g.nodes == 1 else 120.0 / 128.0),
                      channels * PER_CH_MAX_TREE_LL128_BW[cc][i2])
        if algo == "collnet_direct":
            factor = ppn / channels
            factor -= (factor - 1) / 2
            bus /= factor
            if cc >= 2:
                bus *= 0.85
        if not (algo != "ring" and coll in ("all_gather", "reduce_scatter")):
            ratio = g.ranks / self._nsteps(coll) if algo in ("ring", "nvls", "nvls_tree") else 0.5
            bus *= ratio
        return bus

    def latency_us(self, coll: str, algo: str, proto: str) -> float:
        """``comm->latencies[coll][algo][proto]`` in microseconds."""
        g, p = self.graph, PROTOCOLS.index(proto)
        nsteps, ppn = self._nsteps(coll), g.ranks // g.nodes
        hw = g.intra_hw if g.nodes == 1 else "net"
        intra = HW_LATENCY_US[g.intra_hw][algo][p]
        inter = HW_LATENCY_US["net"]["tree" if ppn == 1 else algo][p] + g.latency_inter_us
        if proto == "Simple":
            inter += g.latency_inter_us
        lat = BASE_LATENCY_US[algo][p]
        if algo == "ring":
            step = HW_LATENCY_US[hw]["ring"][p]
            if coll in ("reduce", "broadcast"):
                return lat + step  # NCCL: graphs->sameChannels; rings share channels here
            net = 0.0
            if g.nodes > 1:
                net = g.net_overhead_us * (3 if proto == "Simple" else 1)
            intra = max(intra, net)
            inter_steps = 0 if g.nodes == 1 else (2 * (g.nodes - 1) if coll == "all_reduce"
                                                  else g.nodes - 1)
            return lat + (nsteps - inter_steps) * intra + inter_steps * inter
        if algo == "tree":
            return lat + (2 * ((ppn - 1) * intra + _log2i(g.nodes) * inter)
                          if coll == "all_reduce" else 0.0)
        if algo == "collnet_direct":
            return lat + 2 * (min(1, ppn - 1) * intra + (ppn - 1) * 0.4) + inter
        if algo == "collnet_chain":
            return lat + 2 * (ppn - 1) * intra + inter
        if algo == "nvls":
            return intra + (inter if g.nodes > 1 else 0.0)
        return lat + intra + 2 * _log2i(g.nodes) * inter   # nvls_tree

    # -- ncclTopoGetAlgoTime ---------------------------------------------------------------------
    def terms_us(self, coll: str, algo: str, proto: str, size_bytes: float,
                 pipe_ops: int = 1) -> tuple[float, float] | None:
        """(latency, bandwidth) terms of NCCL's estimate in us; None if the pair is disabled."""
        bw = self.bus_bandwidth_gbps(coll, algo, proto)
        if bw == 0:
            return None
        lat = self.latency_us(coll, algo, proto)
        p = PROTOCOLS.index(proto)
        log_size = _log2i(int(size_bytes) >> 6)
        if algo == "tree" and coll == "all_reduce" and 0 <= log_size < 23:
            bw *= TREE_CORRECTION[p][log_size]
        if (algo == "ring" and proto == "Simple" and self.graph.nodes > 1 and coll == "all_reduce"
                and size_bytes / (self.graph.channels * self.graph.ranks) >= 64):
            lat *= 1.4 if ARCHS.index(self.graph.arch) >= 1 else 1.9   # plateau effect of ring
        count = pipe_ops if algo == "ring" else math.ceil(pipe_ops / 8)
        return lat * count, size_bytes / (1000.0 * bw)

    def nccl_time_us(self, coll: str, algo: str, proto: str, size_bytes: float,
                     pipe_ops: int = 1) -> float | None:
        """NCCL's estimate (us) for one (algo, proto), exactly its formula; None if disabled."""
        terms = self.terms_us(coll, algo, proto, size_bytes, pipe_ops)
        return None if terms is None else terms[0] + terms[1]

    def choose(self, coll: str, size_bytes: float) -> tuple[str, str, float]:
        """(algorithm, protocol, NCCL's estimate in us) of the fastest enabled pair, as NCCL picks."""
        best = ("", "", math.inf)
        for algo in ALGORITHMS:
            for proto in PROTOCOLS:
                t = self.nccl_time_us(coll, algo, proto, size_bytes)
                if t is not None and t < best[2]:
                    best = (algo, proto, t)
        if not best[0]:
            raise ValueError(f"NCCL model: no algorithm enabled for {coll} on {self.graph}")
        return best

    def fitted_terms_s(self, coll: str, size_bytes: float) -> tuple[str, str, float, float]:
        """(algorithm, protocol, latency s, transfer s) of the collective NCCL would run: its
        chosen (algo, proto), with the fitted corrections (:class:`NcclFit`) applied."""
        algo, proto, _ = self.choose(coll, size_bytes)
        p = PROTOCOLS.index(proto)
        lat_us, bw_us = self.terms_us(coll, algo, proto, size_bytes)
        if algo in ("nvls", "nvls_tree"):
            bw_us /= self.fit.nvls_bandwidth_scale
            if algo == "nvls" and self.fit.nvls_chunk_overhead_bytes:
                heads = self.graph.ranks // self.graph.nodes   # every local GPU heads NVLS chunks
                chunk = nvls_chunk_bytes(size_bytes, self.graph.nvls_channels, heads)
                bw_us *= 1.0 + self.fit.nvls_chunk_overhead_bytes / chunk
        else:
            bw_us /= self.fit.bandwidth_scale[p]
        return algo, proto, 1e-6 * lat_us * self.fit.latency_scale[p], 1e-6 * bw_us

    def time_s(self, coll: str, size_bytes: float) -> float:
        """Predicted time of the collective NCCL would run (:meth:`fitted_terms_s`)."""
        if self.graph.ranks < 2 or size_bytes <= 0:
            return 0.0
        _, _, latency_s, transfer_s = self.fitted_terms_s(coll, size_bytes)
        return latency_s + transfer_s


# -- the cluster hook: intra-node collectives timed by NCCL's model --------------------------------

def arch_of(gpu_name: str) -> str:
    """NCCL's compute-capability class of a GPU preset name."""
    name = gpu_name.upper()
    if name.startswith(("B100", "B200", "GB200", "B300")):
        return "blackwell"
    if name.startswith(("H100", "H200", "H800", "GH200")):
        return "hopper"
    if name.startswith(("A100", "A800", "A30", "A10", "A40", "L40", "L4")):
        return "ampere"
    return "volta"


# Uncalibrated graph guess from what NCCL's maintainers publish for H100 NVSwitch nodes
# (NVIDIA/nccl-tests#212): ring bus bandwidth ~370 of the 450 GB/s line rate ("protocol
# overhead ~20 %"), NVLS all-reduce on 8 GPUs ~275 GB/s algorithm bandwidth (~480 bus).
RING_LINE_RATE_FRACTION = 370.0 / 450.0
NVLS_ALGBW_LINE_RATE_FRACTION_8_GPUS = 275.0 / 450.0
DEFAULT_CHANNELS = 16


def default_graph(arch: str, ranks: int, nvlink_bytes_per_s: float) -> NcclGraph:
    """An uncalibrated guess of NCCL's topology search on an NVSwitch node: 16 channels whose
    bus bandwidth is ``RING_LINE_RATE_FRACTION`` of the NVLink rate, and on Hopper and later
    (more than 4 GPUs, where NCCL runs NVLS) an NVLS graph sized so that 8 GPUs reach NCCL's
    published NVLS all-reduce bandwidth. Calibrate (``calibrate --from`` nccl-tests output) to
    replace it."""
    line_gbps = nvlink_bytes_per_s / 1e9
    bw = RING_LINE_RATE_FRACTION * line_gbps / DEFAULT_CHANNELS
    nvls = arch in ("hopper", "blackwell") and ranks > 4   # NVLS only above 4 GPUs (nccl_fit)
    nvls_bw = 0.0
    if nvls:
        # algBw(8) = ch * b * eff * (ch - 1)/ch * 2 * 8/14: solve for the per-channel b
        eff = NVLS_EFFICIENCY[ARCHS.index(arch)]
        per_b = DEFAULT_CHANNELS * eff * (DEFAULT_CHANNELS - 1) / DEFAULT_CHANNELS * 2 * 8 / 14
        nvls_bw = NVLS_ALGBW_LINE_RATE_FRACTION_8_GPUS * line_gbps / per_b
    return NcclGraph(arch=arch, ranks=ranks, channels=DEFAULT_CHANNELS, bw_intra_gbps=bw,
                     nvls_channels=DEFAULT_CHANNELS if nvls else 0, nvls_bw_intra_gbps=nvls_bw)


@dataclass(frozen=True)
class NcclCollectives:
    """``Cluster.collective_model``: times each collective inside one node with NCCL's model
    and hands the fabric one coflow (a ring of equal flows) that takes exactly that long on the
    idle fabric: the latency term as the step's latency (less the path latency the fabric adds),
    the bandwidth term as bytes at the NVLink rate. Contention with other traffic still comes
    from the fabric. Groups spanning nodes, all-to-all and send/recv return None (the flow
    algorithms handle them)."""

    arch: str
    nvlink_bytes_per_s: float
    path_latency_s: float = 0.0
    models: Mapping[int, NcclModel] = field(default_factory=dict)   # ranks -> fitted model

    def model(self, ranks: int) -> NcclModel:
        fitted = self.models.get(ranks)
        return fitted if fitted is not None else NcclModel(
            default_graph(self.arch, ranks, self.nvlink_bytes_per_s))

    def steps(self, kind: str, group: list[int], size_bytes: float):
        from clustersim.hardware.network.collectives import _ring_pairs
        from clustersim.sim.program import FlowStep

        if kind not in COLLECTIVES or len(group) < 2 or size_bytes <= 0:
            return None
        model = self.model(len(group))
        _, _, latency_s, transfer_s = model.fitted_terms_s(kind, size_bytes)
        return (FlowStep(_ring_pairs(group), transfer_s * self.nvlink_bytes_per_s, 1,
                         max(latency_s - self.path_latency_s, 0.0)),)
