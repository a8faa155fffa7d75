"""Fit NCCL's tuning model (``hardware/network/nccl.py``) to measured collective times.

Per group size (NCCL's topology search gives each communicator its own graph), every topology
NCCL's search could produce (channels x its speed arrays, ``src/graph/search.cc``; within the
GPU's NVLink budget when given; with an NVLS graph on Hopper NVSwitch nodes of more than 4 GPUs)
gets its corrections (``NcclFit``: per-protocol latency and bandwidth scales, NVLS bandwidth scale
and per-chunk overhead) fitted by robust least squares on log time, each size octave weighted
alike; the best fit wins, ties going to the graph with most bandwidth. NCCL's pick of algorithm
and protocol per message comes from its own unscaled estimate, as in NCCL, so it is computed once
per graph (``_Terms``) and the least squares only rescale its terms.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares

from clustersim.hardware.network.nccl import PROTOCOLS, NcclFit, NcclGraph, NcclModel

# NCCL search.cc speed arrays (GB/s per channel): speedArrayIntra (pre-Hopper), sm90SpeedArrayIntra.
SPEEDS = {"ampere": (40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0),
          "hopper": (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0)}
CHANNELS = (2, 4, 8, 12, 16, 24, 32)
NVLS_CHANNELS = 16       # NCCL_NVLS_NCHANNELS default (src/transport/nvls.cc, NCCL 2.18-2.2x)
# NCCL runs NVLS only on more than 4 GPUs of an NVSwitch node: measured on 8x H200 with nccl-tests
# and NCCL 2.27.7, 4 GPUs pick Ring (busbw 363.3 GB/s at 8 GiB, the same with NVLS off), 5-8 GPUs
# NVLS (414-473 GB/s) (stas00/ml-engineering network/README.md, "SHARP"); NVIDIA's GB200 NVL
# partition guide: "partitions that have less than or equal to four GPUs will not benefit from
# multicast". So the fit offers no NVLS graph at 4 GPUs or fewer unless told (``nvls=True``).
NVLS_MIN_RANKS = 4
MIN_SAMPLES = 4
TIE_LOG_ERROR = 1e-3     # fits within 0.1 % (mean |log error|) of the best count as ties


@dataclass(frozen=True)
class CollectiveSample:
    collective: str
    ranks: int
    size_bytes: float
    time_s: float


def _predict(model: NcclModel, samples: Sequence[CollectiveSample]) -> np.ndarray:
    return np.array([model.time_s(s.collective, s.size_bytes) for s in samples])


def octave_weights(samples: Sequence[CollectiveSample]) -> np.ndarray:
    """Weights that make every octave of message size count the same in a fit, whatever the
    sampling density of the source (Vidur's tables have 8 KiB steps: most rows are large)."""
    octave = np.floor(np.log2([s.size_bytes for s in samples]))
    _, index, counts = np.unique(octave, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[index]
    return weights / weights.sum()


def graph_options(arch: str, ranks: int, *, nvls: bool | None = None,
                  budget_gbps: float | None = None) -> list[tuple[int, float, int, float]]:
    """The (channels, GB/s per channel, NVLS channels, NVLS GB/s per channel) topologies the fit
    searches: NCCL's speed array times channel counts. With ``budget_gbps`` (a GPU's NVLink
    budget in NCCL's units, ``nccl.graph_budget_gbps``) only graphs NCCL's search could return
    on an NVSwitch node: total graph bandwidth within the budget and above half of it (the search
    keeps the fastest graph that fits, so a small fraction of the links is never its answer).
    NVLS graphs have NCCL's default 16 channels (``NCCL_NVLS_NCHANNELS``) and obey the same
    budget."""
    speeds = SPEEDS.get(arch, SPEEDS["ampere"])

    def allowed(channels: int, bw: float) -> bool:
        return budget_gbps is None or 0.5 * budget_gbps <= channels * bw <= budget_gbps

    nvls_options = [(0, 0.0)]
    if nvls if nvls is not None else (arch in ("hopper", "blackwell") and ranks > NVLS_MIN_RANKS):
        # an NVSwitch node with multicast always has an NVLS graph: NCCL then picks NVLS or not
        # per message by its own estimate (never offer the fit a node without one)
        if budget_gbps is None:
            nvls_options = [(c, b) for c in (16, 24, 32) for b in (20.6, 40.0)]
        else:
            nvls_options = [(NVLS_CHANNELS, b) for b in speeds if allowed(NVLS_CHANNELS, b)]
    return [(c, b, nvc, nvb) for c, b in itertools.product(CHANNELS, speeds) if allowed(c, b)
            for nvc, nvb in nvls_options]


def fit_nccl(arch: str, ranks: int, samples: Sequence[CollectiveSample], *,
             nvls: bool | None = None, budget_gbps: float | None = None,
             picks: Sequence[tuple[str, float, str]] = ()) -> NcclModel:
    """An NCCL model of a ``ranks``-GPU communicator on one node fitted to ``samples``
    (``budget_gbps``: restrict the topology search as :func:`graph_options` says; ``picks``:
    (collective, bytes, algorithm) that NCCL is known to choose, e.g. from its
    ``NCCL_DEBUG_SUBSYS=TUNING`` log: graphs whose pick differs are not considered)."""
    samples = [s for s in samples if s.ranks == ranks]
    if len(samples) < MIN_SAMPLES:
        raise ValueError(f"fitting the NCCL model for {ranks} GPUs needs at least {MIN_SAMPLES} "
                         f"timings, got {len(samples)}")
    measured = np.log([s.time_s for s in samples])
    weights = octave_weights(samples)
    graphs = [NcclGraph(arch=arch, ranks=ranks, channels=c, bw_intra_gbps=b, nvls_channels=nvc,
                        nvls_bw_intra_gbps=nvb)
              for c, b, nvc, nvb in graph_options(arch, ranks, nvls=nvls, budget_gbps=budget_gbps)]
    graphs = [g for g in graphs
              if all(NcclModel(g).choose(coll, size)[0] == algo for coll, size, algo in picks)]
    if not graphs:
        raise ValueError(f"no NCCL graph for {ranks} GPUs ({arch}) makes the picks {list(picks)}")
    fits = [_fit_scales(NcclModel(g), samples, measured, weights) for g in graphs]
    # NCCL's search keeps the fastest graph that fits, so among fits as good as the best (the
    # samples may not depend on the ring's bandwidth, e.g. when NVLS runs every large message)
    # keep the one with the most graph bandwidth
    best = min(error for error, _ in fits)
    tied = [model for error, model in fits if error <= best + TIE_LOG_ERROR]
    return max(tied, key=lambda m: (m.graph.channels * m.graph.bw_intra_gbps, m.graph.channels))


@dataclass(frozen=True)
class _Terms:
    """NCCL's unscaled terms per sample for one graph (its pick does not depend on the fit)."""

    protocol: np.ndarray      # index into PROTOCOLS
    nvls: np.ndarray          # bool: NVLS picked
    latency_us: np.ndarray
    transfer_us: np.ndarray
    chunk_bytes: np.ndarray   # NVLS chunk (1 where not NVLS)

    @classmethod
    def of(cls, model: NcclModel, samples: Sequence[CollectiveSample]) -> "_Terms":
        from clustersim.hardware.network.nccl import nvls_chunk_bytes

        rows = []
        g = model.graph
        for s in samples:
            algo, proto, _ = model.choose(s.collective, s.size_bytes)
            lat, bw = model.terms_us(s.collective, algo, proto, s.size_bytes)
            chunk = (nvls_chunk_bytes(s.size_bytes, g.nvls_channels, g.ranks // g.nodes)
                     if algo == "nvls" else 1)
            rows.append((PROTOCOLS.index(proto), algo in ("nvls", "nvls_tree"), lat, bw, chunk))
        p, nv, lat, bw, chunk = (np.array(c) for c in zip(*rows))
        return cls(p, nv.astype(bool), lat, bw, chunk.astype(float))

    def time_us(self, fit: NcclFit) -> np.ndarray:
        """Exactly ``NcclModel.fitted_terms_s`` summed, vectorised (in us)."""
        lat = self.latency_us * np.asarray(fit.latency_scale)[self.protocol]
        ring = self.transfer_us / np.asarray(fit.bandwidth_scale)[self.protocol]
        nvls = self.transfer_us / fit.nvls_bandwidth_scale * (
            1.0 + fit.nvls_chunk_overhead_bytes / self.chunk_bytes)
        return lat + np.where(self.nvls, nvls, ring)


def _fit_scales(base: NcclModel, samples: Sequence[CollectiveSample], measured: np.ndarray,
                weights: np.ndarray) -> tuple[float, NcclModel]:
    """(weighted mean |log error|, model) with per-protocol latency and bandwidth scales (and the
    NVLS bandwidth scale and per-chunk overhead when NCCL picks NVLS for some sample) fitted by
    robust least squares on log time, for the protocols NCCL picks over the samples."""
    terms = _Terms.of(base, samples)
    nvls = bool(terms.nvls.any())
    # the per-chunk overhead is told apart from the NVLS scale only by two chunk sizes or more
    chunk_nvls = len(set(terms.chunk_bytes[terms.nvls].tolist())) >= 2
    # latency scales for every protocol picked; bandwidth scales for those picked by ring/tree
    lat_used = sorted(set(terms.protocol.tolist()))
    bw_used = sorted(set(terms.protocol[~terms.nvls].tolist()))
    n_lat, n_bw = len(lat_used), len(bw_used)

    def fit_of(x: np.ndarray) -> NcclFit:
        lat, bw = [1.0] * 3, [1.0] * 3
        for i, p in enumerate(lat_used):
            lat[p] = float(np.exp(x[i]))
        for i, p in enumerate(bw_used):
            bw[p] = float(np.exp(x[n_lat + i]))
        nvls_bw = float(np.exp(x[n_lat + n_bw])) if nvls else 1.0
        overhead = float(np.exp(x[-1])) if chunk_nvls else 0.0
        return NcclFit(tuple(lat), tuple(bw), nvls_bw, overhead)

    root_w = np.sqrt(weights * len(weights))

    def residuals(x: np.ndarray) -> np.ndarray:
        return root_w * (np.log(1e-6 * terms.time_us(fit_of(x))) - measured)

    start = np.zeros(n_lat + n_bw + nvls + chunk_nvls)
    low, high = np.full(start.size, np.log(0.1)), np.full(start.size, np.log(10.0))
    if chunk_nvls:   # per-chunk overhead between 64 B and 2 x the largest chunk
        start[-1], low[-1], high[-1] = np.log(4096.0), np.log(64.0), np.log(262144.0)
    result = least_squares(residuals, start, bounds=(low, high), loss="soft_l1", f_scale=0.1)
    fit = fit_of(result.x)
    error = float(np.sum(weights * np.abs(np.log(1e-6 * terms.time_us(fit)) - measured)))
    return error, replace(base, fit=fit)


def predict_s(model: NcclModel, samples: Sequence[CollectiveSample]) -> np.ndarray:
    return _predict(model, samples)


def profile_section(models: dict[int, NcclModel]) -> dict:
    """``measurements.nccl`` of a profile: ranks -> {graph, fit} (see ``Profile.nccl_models``)."""
    import dataclasses

    return {"models": {ranks: {"graph": dataclasses.asdict(m.graph), "fit": m.fit.to_dict()}
                       for ranks, m in sorted(models.items())}}


def fit_on_device_all_reduce(record: dict, arch: str) -> dict | None:
    """The NCCL section fitted to an on-device calibration's all-reduce timings
    (``validate/collectives.py``: ``{gpus, backend, sizes: [{bytes, median_s}]}``), so that the
    NCCL measurements a calibration stores reach the collective model; None when too few."""
    if record.get("backend") != "nccl" or "sizes" not in record:
        return None
    ranks = int(record["gpus"])
    samples = [CollectiveSample("all_reduce", ranks, float(row["bytes"]), float(row["median_s"]))
               for row in record["sizes"] if row.get("median_s", 0) > 0]
    if ranks < 2 or len(samples) < MIN_SAMPLES:
        return None
    return profile_section({ranks: fit_nccl(arch, ranks, samples)})
