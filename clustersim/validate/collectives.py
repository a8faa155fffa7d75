"""All-reduce across this machine's GPUs with torch.distributed and NCCL (two GPUs or more).

One process per GPU (``torch.multiprocessing.spawn``), a rendezvous on a free local port, then
``all_reduce`` of fp32 buffers from 1 MiB up, timed on rank 0 with CUDA events after a barrier.
Rates follow nccl-tests: ``algbw = size / time`` and ``busbw = algbw * 2 (n - 1) / n``, so the
bus bandwidth compares with a link's per-direction bandwidth. With fewer than two GPUs, or without
NCCL, it is skipped and says why. Imports torch.
"""

from __future__ import annotations

import socket
from typing import Any

import torch


def skip_reason() -> str | None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return (f"all-reduce skipped: it needs 2 or more GPUs and this machine has {count} "
                "(torch.distributed with NCCL)")
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return "all-reduce skipped: this torch build has no NCCL backend"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, sizes: list[int], repeats: int, queue: Any) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        results = []
        for size in sizes:
            buffer = torch.randn(size // 4, device=f"cuda:{rank}")
            for _ in range(3):
                dist.all_reduce(buffer)
            times = []
            for _ in range(repeats):
                dist.barrier()
                torch.cuda.synchronize()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                dist.all_reduce(buffer)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            times.sort()
            results.append((size, times[len(times) // 2], times[len(times) // 10],
                            times[(9 * len(times)) // 10]))
        if rank == 0:
            queue.put(results)
    finally:
        dist.destroy_process_group()


def measure_all_reduce(quick: bool) -> dict[str, Any]:
    """Median all-reduce times and bus bandwidths over sizes; ``{"skipped": reason}`` if not run."""
    reason = skip_reason()
    if reason:
        return {"skipped": reason}
    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    sizes = [2**20 * s for s in ((1, 16, 256) if quick else (1, 4, 16, 64, 256, 1024))]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.spawn(_worker, args=(world, _free_port(), sizes, 10 if quick else 30, queue),
             nprocs=world, join=True)
    rows = queue.get()
    return {"gpus": world, "backend": "nccl",
            "sizes": [{"bytes": size, "median_s": median, "p10_s": p10, "p90_s": p90,
                       "algbw_bytes_per_s": size / median,
                       "busbw_bytes_per_s": size / median * 2 * (world - 1) / world}
                      for size, median, p10, p90 in rows]}
