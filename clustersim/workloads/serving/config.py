"""The sections of a serving workload besides ``requests:`` (see ``requests.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clustersim.units import Bytes, NonNegativeBytes, Seconds

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ParallelConfig(BaseModel):
    model_config = _STRICT

    tp: int = Field(1, ge=1, description="tensor-parallel GPUs per stage (Megatron splits)")
    pp: int = Field(1, ge=1, description="pipeline stages per replica (pp virtual engines, as "
                                         "vLLM, each with its own scheduler and KV share)")
    replicas: int = Field(1, ge=1, description="independent model replicas (data parallel)")


class SchedulerConfig(BaseModel):
    model_config = _STRICT

    policy: Literal["static", "continuous", "chunked_prefill", "prefix_aware"] = Field(
        "continuous", description="batch policy: static (request-level), continuous (vLLM), "
                                  "chunked_prefill (SARATHI), prefix_aware (BatchLLM)")
    max_num_seqs: int = Field(256, ge=1, description="sequences in a batch at most (vLLM's "
                                                     "max_num_seqs)")
    max_batched_tokens: int | None = Field(
        None, ge=1, description="continuous: prompt tokens per prefill iteration (default "
                                "max(2048, max_model_len), as vLLM); chunked_prefill and "
                                "prefix_aware: the token budget of every iteration (default 512)")


class KVCacheConfig(BaseModel):
    model_config = _STRICT

    block_size: int = Field(16, ge=1, description="tokens per KV block (vLLM's default 16)")
    dtype: Literal["bf16", "fp16", "fp8", "fp32"] | None = Field(
        None, description="KV cache dtype; default the model's dtype")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="fraction of HBM for weights, activations and KV (vLLM)")
    activation_reserve: Literal["auto"] | Bytes = Field(
        "auto", description="HBM per GPU kept for activations; auto: the peak of one iteration "
                            "of max_batched_tokens tokens")
    num_blocks: int | None = Field(None, ge=1, description="override the KV blocks per replica "
                                                           "(otherwise from the memory left)")
    preemption: Literal["recompute", "swap"] = Field(
        "recompute", description="when blocks run out: drop the KV and prefill again later, or "
                                 "move it to host DDR over the GPU's host link and back")
    swap_space: NonNegativeBytes = Field(
        4 * 2**30, description="host memory per GPU for swapped KV (vLLM's default 4 GiB); a "
                               "preemption that does not fit falls back to recompute")
    watermark: float = Field(0.01, ge=0, lt=1, description="fraction of blocks kept free when "
                                                           "admitting (vLLM's 1 %)")
    prefix_caching: bool = Field(True, description="keep shared-prefix blocks after their last "
                                                   "user ends, until evicted (LRU)")


class SLOConfig(BaseModel):
    model_config = _STRICT

    ttft: Seconds = Field(2.0, description="time to first token a request must meet")
    tpot: Seconds = Field(0.1, description="mean time per output token (after the first) a "
                                           "request must meet")
    e2e: Seconds | None = Field(None, description="end-to-end latency bound, if any")
