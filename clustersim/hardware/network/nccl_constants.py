"""NCCL's own constants for its cost model: the tuner's latencies and bandwidth caps
(``src/graph/tuning.cc``), the per-link NVLink bandwidth of its topology model
(``src/graph/topo.h``) and the NVLS chunk schedule (``src/enqueue.cc``). Data, with sources;
``nccl.py`` evaluates them.
"""

from __future__ import annotations

ALGORITHMS = ("tree", "ring", "collnet_direct", "collnet_chain", "nvls", "nvls_tree")
PROTOCOLS = ("LL", "LL128", "Simple")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce")
ARCHS = ("volta", "ampere", "hopper", "blackwell")

# -- NCCL's tuner constants (tuning.cc ncclTunerConstantsDefaults), microseconds and GB/s ------
BASE_LATENCY_US = {  # [algo][proto]
    "tree": (6.8, 14.0, 8.4), "ring": (6.6, 14.0, 8.4), "collnet_direct": (0, 0, 0),
    "collnet_chain": (0, 0, 0), "nvls": (0, 0, 0), "nvls_tree": (0, 0, 0)}
HW_LATENCY_US = {    # [hw][algo][proto]
    "nvlink": {"tree": (0.6, 1.25, 4.0), "ring": (0.6, 1.9, 3.4), "collnet_direct": (0, 0, 3.7),
               "collnet_chain": (0, 0, 2.8), "nvls": (0, 0, 25), "nvls_tree": (0, 0, 25)},
    "pci": {"tree": (1.0, 1.9, 4.0), "ring": (1.0, 2.5, 5.7), "collnet_direct": (0, 0, 3.7),
            "collnet_chain": (0, 0, 2.8), "nvls": (0, 0, 0), "nvls_tree": (0, 0, 0)},
    "net": {"tree": (5.0, 8.5, 14), "ring": (2.7, 4.0, 14.0), "collnet_direct": (0, 0, 31),
            "collnet_chain": (0, 0, 30), "nvls": (0, 0, 18), "nvls_tree": (0, 0, 20.9)}}
# [arch index or CPU vendor][nodes index: 1, 2, >2]. Single node: indexed by GPU arch.
LL_MAX_BW = ((39.0, 39.0, 20.4), (87.7, 22.5, 19.0), (141.0, 45.0, 35.0), (282.0, 90.0, 70.0))
PER_CH_MAX_RING_LL128_BW = ((20.0,) * 3, (20.0,) * 3, (36.7,) * 3, (40.0,) * 3)
PER_CH_MAX_TREE_LL128_BW = ((20.0,) * 3, (20.0,) * 3, (36.7, 36.7, 29.0), (55.6, 31.67, 20.0))
PER_CH_MAX_TREE_BW = ((26.5, 18.5, 10.0), (24.0, 23.6, 17.8), (38.7, 41.4, 36.0), (70.0, 42.8, 24.0))
PER_CH_MAX_NVLS_TREE_BW = ((26.5, 18.5, 10.0), (24.0, 23.6, 17.8), (0.0, 57.7, 45.5), (0.0, 96.0, 80.0))
NVLS_EFFICIENCY = (0.0, 0.0, 0.85, 0.74)
# Tree all-reduce correction per log2(nBytes / 64), protocols LL, LL128, Simple.
TREE_CORRECTION = (
    (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0, 1.0, 1.0, 1.0),
    (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1.0, 1.0, 1.0),
    (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9, .9))


# NCCL's bandwidth of one NVLink in its topology model, GB/s per direction (src/graph/topo.h:
# SM80_NVLINK_BW 20.0, SM90_NVLINK_BW 20.6, SM100_NVLINK_BW 40.1), against a line rate of 25 GB/s
# per link and direction for NVLink 3/4 (A100: 12 links = 300 GB/s, H100: 18 = 450 GB/s) and 50
# for NVLink 5. Its graph search places channels so that the graph bandwidth of a GPU
# (channels x per-channel bandwidth) fits in links x this figure: 240 GB/s on an A100,
# 370.8 GB/s on an H100 ("~370 GB/s effective NVLink bandwidth", NVIDIA/nccl-tests#212).
NCCL_NVLINK_GBPS = {"volta": 20.0, "ampere": 20.0, "hopper": 20.6, "blackwell": 40.1}
NVLINK_LINE_GBPS_PER_LINK = {"volta": 25.0, "ampere": 25.0, "hopper": 25.0, "blackwell": 50.0}


def graph_budget_gbps(arch: str, nvlink_bytes_per_s: float) -> float:
    """NCCL's NVLink bandwidth budget of one GPU (GB/s): its links times NCCL's per-link figure,
    the links counted from the node's per-direction NVLink rate."""
    if arch not in ARCHS:
        raise ValueError(f"graph_budget_gbps: arch must be one of {ARCHS}, got {arch!r}")
    links = round(nvlink_bytes_per_s / 1e9 / NVLINK_LINE_GBPS_PER_LINK[arch])
    return links * NCCL_NVLINK_GBPS[arch]


# NVLS chunk size (NVIDIA/nccl src/enqueue.cc, computeColl, NCCL 2.19-2.2x): 128 KiB at most, cut
# to 64 / 32 / 16 KiB when the message is below 64 / 8 / 2 x (channels x heads x chunk).
NVLS_MAX_CHUNK_BYTES = 131072


def nvls_chunk_bytes(size_bytes: float, channels: int, heads: int) -> int:
    """The chunk NCCL's NVLS all-reduce moves per step for a message of ``size_bytes``."""
    chunk = NVLS_MAX_CHUNK_BYTES
    concurrent_ops = channels * heads
    for factor, limit in ((64, 65536), (8, 32768), (2, 16384)):
        if size_bytes < factor * concurrent_ops * chunk and chunk > limit:
            chunk = limit
    return chunk
