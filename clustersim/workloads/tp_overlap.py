"""Tensor-parallel communication overlapped with the GEMMs that produce or consume it.

Fidelity: analytical (closed forms over the ops' stand-alone times; used at layer granularity).

Megatron-Core's ``--tp-comm-overlap`` (Transformer Engine "userbuffers", which needs sequence
parallelism) hides the all-gathers and reduce-scatters of a tensor-parallel layer behind its
linear GEMMs. Transformer Engine names three methods (``comm_gemm_overlap.h``,
``NVTE_Comm_Overlap_Algo``) and Megatron-Bridge picks one per GEMM
(``src/megatron/bridge/training/comm_overlap.py``, e.g. ``userbuffers_bf16_h100_h8192_tp4_mbs1_
seqlen8192`` for Llama-3 70B on H100):

* **ring exchange** (``qkv_fprop``, ``fc1_fprop``, ``proj_dgrad``, ``fc2_dgrad``): the all-gather
  before a column-parallel GEMM becomes ``n - 1`` point-to-point steps (``n`` = TP size); each
  step's transfer runs while the GEMM works on the chunk already present::

      T = (n - 1) * pair(G/n, C/(n - 1)) + G/n

* **pipeline** (``proj_fprop``, ``fc2_fprop`` in bf16): the row-parallel GEMM is split into
  ``s`` chunks (``num_splits``, 4) and each chunk's reduce-scatter runs during the next chunk::

      T = G/s + (s - 1) * pair(G/s, C/s) + C/s

  (fp8 configs use ring exchange for these too: ``rs_method: ring_exchange``, same form as above);

* **bulk** (``qkv_dgrad``/``fc1_dgrad`` with the input all-gather, ``qkv_wgrad``/``fc1_wgrad``
  with the gradient reduce-scatter): a collective and a GEMM that do not depend on each other
  run side by side: ``T = pair(G, C)``.

``pair(g, c)`` is two kernels started together. Interference (Echo, Feng et al. 2024, arXiv
2412.12487, accounts for the "interference-induced computation slowdown from overlapping
communication and computation kernels on the same device"; MegaScale, Jiang et al. NSDI'24,
overlaps TP communication with GEMMs the same way): while both run, the GEMM runs ``a`` times
slower and the collective ``b`` times slower;
whichever ends first frees the other to run at full speed::

      pair(g, c) = c + a g (1 - 1/b)   if a g <= b c   (the GEMM ends first)
                   g + b c (1 - 1/a)   otherwise

``a = S / (S - k) + gemm_contention``: a userbuffers communication kernel holds ``k`` of the GPU's
``S`` SMs (``num_sm`` per GEMM in each Megatron-Bridge config, ``comm_sms`` here keyed by TE's
names ``qkv_fprop`` ... ``fc2_wgrad``; with ``set_sm_margin`` the GEMM is launched
on ``S - k`` SMs), and ``gemm_contention`` adds the HBM/L2 share the communication takes (0 by
default: no public measurement to set it from). ``b = 1 + comm_contention``. With no
interference (``a = b = 1``) ``pair = max(g, c)``, so overlap is never slower than running the
two one after the other; with interference every form lies between ``max(G, C)`` and
``a G + b C``. Chunked GEMMs are timed as ``G/n`` (their own wave quantisation is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clustersim.ops import Op, OpKind

METHODS = ("ring_exchange", "pipeline", "bulk")
# Transformer Engine's names of the four linear layers of a block (ub_name) for our GEMM names.
TE_LAYER = {"qkv_proj": "qkv", "attn_out_proj": "proj", "mlp_up_gate": "fc1", "mlp_down": "fc2"}
# num_sm per GEMM of Megatron-Bridge's userbuffers_bf16_h100_h8192_tp4_mbs1_seqlen8192 (Llama-3
# 70B, H100, TP 4); the ring-exchange GEMMs use RingExchangeOverlapCfg's default num_sm = 1.
BRIDGE_H100_BF16_SMS = (("proj_fprop", 24), ("fc2_fprop", 16), ("qkv_dgrad", 4), ("qkv_wgrad", 24),
                        ("fc1_dgrad", 2), ("fc1_wgrad", 4))


def te_gemm_name(op: Op) -> str:
    """``qkv_fprop``, ``fc1_dgrad``, ...: the name userbuffers configs give this GEMM ('' if none)."""
    base, _, suffix = op.name.partition(".")
    layer = TE_LAYER.get(base)
    if layer is None or suffix not in ("", "dgrad", "wgrad"):
        return ""
    return f"{layer}_{suffix or 'fprop'}"


@dataclass(frozen=True)
class TPOverlap:
    """Megatron-Core TP communication overlap. Defaults: Megatron-Bridge's H100 bf16 Llama-3 70B
    TP 4 config (``userbuffers_bf16_h100_h8192_tp4_mbs1_seqlen8192``)."""

    rs_method: Literal["pipeline", "ring_exchange"] = "pipeline"  # proj_fprop / fc2_fprop
    pipeline_splits: int = 4       # PipelineOverlapCfg.num_splits
    pipeline_comm_sms: int = 16    # fallbacks per method for GEMMs ``comm_sms`` does not name
    ring_comm_sms: int = 1         # RingExchangeOverlapCfg.num_sm default
    bulk_comm_sms: int = 4
    comm_sms: tuple[tuple[str, int], ...] = BRIDGE_H100_BF16_SMS  # (TE GEMM name, num_sm)
    gemm_contention: float = 0.0   # extra GEMM slowdown while overlapped (memory contention)
    comm_contention: float = 0.0   # collective slowdown while overlapped

    def __post_init__(self) -> None:
        if self.pipeline_splits < 1:
            raise ValueError(f"pipeline_splits must be >= 1, got {self.pipeline_splits}")
        for name in ("pipeline_comm_sms", "ring_comm_sms", "bulk_comm_sms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, sms in self.comm_sms:
            if sms < 0:
                raise ValueError(f"comm_sms[{name}] must be >= 0, got {sms}")
        for name in ("gemm_contention", "comm_contention"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def sms_for(self, method: str, gemm_name: str = "") -> int:
        """SMs the communication kernel overlapped with this GEMM holds: its own entry in
        ``comm_sms``, else the method's fallback."""
        named = dict(self.comm_sms)
        if gemm_name in named:
            return named[gemm_name]
        if method == "bulk":
            return self.bulk_comm_sms
        return self.pipeline_comm_sms if method == "pipeline" else self.ring_comm_sms

    def gemm_factor(self, method: str, num_sms: int | None, gemm_name: str = "") -> float:
        """``a``: how much slower a GEMM runs beside this method's communication kernel."""
        k = self.sms_for(method, gemm_name)
        share = 1.0
        if num_sms is not None and k > 0:
            if k >= num_sms:
                raise ValueError(f"a communication kernel on {k} SMs leaves no SM of {num_sms} "
                                 "for the GEMM")
            share = num_sms / (num_sms - k)
        return share + self.gemm_contention

    @property
    def comm_factor(self) -> float:
        return 1.0 + self.comm_contention


class TPOverlapSpec(BaseModel):
    """``kernels.tp_comm_overlap`` of a training workload (``{}`` for the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rs_method: Literal["pipeline", "ring_exchange"] = Field(
        "pipeline", description="reduce-scatter after row-parallel GEMMs: pipeline (bf16 configs) "
                                "or ring_exchange (fp8 configs)")
    pipeline_splits: int = Field(4, ge=1, description="GEMM chunks of the pipeline method")
    pipeline_comm_sms: int = Field(16, ge=0, description="SMs the pipelined reduce-scatter holds")
    ring_comm_sms: int = Field(1, ge=0, description="SMs a ring-exchange step holds")
    bulk_comm_sms: int = Field(4, ge=0, description="SMs a bulk-overlapped collective holds")
    comm_sms: dict[str, int] = Field(
        default_factory=lambda: dict(BRIDGE_H100_BF16_SMS),
        description="SMs per GEMM by Transformer Engine name (qkv_fprop, proj_fprop, fc1_dgrad, "
                    "fc2_wgrad, ...); replaces the default table (Megatron-Bridge H100 bf16)")
    gemm_contention: float = Field(0.0, ge=0, description="extra fractional GEMM slowdown while "
                                   "overlapped (HBM/L2 contention, Echo)")
    comm_contention: float = Field(0.0, ge=0, description="fractional collective slowdown while "
                                   "overlapped")

    @field_validator("comm_sms")
    @classmethod
    def _known_gemms(cls, value: dict[str, int]) -> dict[str, int]:
        known = sorted(f"{layer}_{p}" for layer in TE_LAYER.values() for p in ("fprop", "dgrad", "wgrad"))
        for name, sms in value.items():
            if name not in known:
                raise ValueError(f"unknown GEMM {name!r} in comm_sms; valid: {', '.join(known)}")
            if sms < 0:
                raise ValueError(f"comm_sms[{name}] must be >= 0, got {sms}")
        return value

    def choice(self) -> TPOverlap:
        fields = self.model_dump(exclude={"comm_sms"})
        return TPOverlap(**fields, comm_sms=tuple(sorted(self.comm_sms.items())))


def pair_time_s(gemm_s: float, comm_s: float, gemm_factor: float = 1.0,
                comm_factor: float = 1.0) -> float:
    """Two kernels started together, each slowed while the other runs (see module docstring)."""
    a, b = gemm_factor, comm_factor
    if gemm_s <= 0 or comm_s <= 0:
        return gemm_s + comm_s
    if a * gemm_s <= b * comm_s:
        return comm_s + a * gemm_s * (1.0 - 1.0 / b)
    return gemm_s + b * comm_s * (1.0 - 1.0 / a)


def overlapped_time_s(method: str, gemm_s: float, comm_s: float, *, chunks: int,
                      gemm_factor: float = 1.0, comm_factor: float = 1.0) -> float:
    """A GEMM and its collective under one of the userbuffers methods."""
    if method == "bulk":
        return pair_time_s(gemm_s, comm_s, gemm_factor, comm_factor)
    if chunks < 2:
        return gemm_s + comm_s
    if method == "ring_exchange":
        g, c = gemm_s / chunks, comm_s / (chunks - 1)
        return (chunks - 1) * pair_time_s(g, c, gemm_factor, comm_factor) + g
    if method == "pipeline":
        g, c = gemm_s / chunks, comm_s / chunks
        return g + (chunks - 1) * pair_time_s(g, c, gemm_factor, comm_factor) + c
    raise ValueError(f"unknown overlap method {method!r}; valid: {METHODS}")


def _collective(op: Op) -> str | None:
    return op.labels.get("collective") if op.kind is OpKind.COLLECTIVE else None


def overlap_pairs(ops: Sequence[Op], rs_method: str = "pipeline") -> list[tuple[int, int, str]]:
    """(collective index, GEMM index, method) for each collective Megatron-Core overlaps.

    Reads the op order ``transformer.py`` emits with sequence parallelism: an all-gather right
    before the GEMM that consumes it; a reduce-scatter right after the GEMM that produces it;
    in the backward pass the input all-gather (for the weight gradient) beside the data-gradient
    GEMM and the data-gradient reduce-scatter beside the weight-gradient GEMM (bulk). All-reduces
    (TP without sequence parallelism) are never overlapped, as in Megatron-Core."""
    pairs, used = [], set()
    for i, op in enumerate(ops):
        kind = _collective(op)
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        prev = ops[i - 1] if i > 0 else None
        next_gemm = nxt is not None and nxt.kind is OpKind.MATMUL and i + 1 not in used
        if kind == "all_gather" and next_gemm:
            method = "bulk" if op.name.endswith(".input.all_gather") else "ring_exchange"
            pairs.append((i, i + 1, method))
            used.add(i + 1)
        elif kind == "reduce_scatter" and op.name.endswith(".dgrad.reduce_scatter") and next_gemm:
            pairs.append((i, i + 1, "bulk"))
            used.add(i + 1)
        elif (kind == "reduce_scatter" and prev is not None and prev.kind is OpKind.MATMUL
              and i - 1 not in used):
            pairs.append((i, i - 1, rs_method))
            used.add(i - 1)
    return pairs


# --- Megatron-LM 2022: asynchronous TP communication in the backward pass ------------------------

# NCCL runs one thread block per channel; the A100 profile's fitted 8-GPU graph has 24 channels,
# the count NCCL logs on HGX A100 (profiles/README.md, "NCCL collectives").
NCCL_A100_CHANNELS = 24


@dataclass(frozen=True)
class AsyncBackwardOverlap:
    """Megatron-LM 2022's overlap of the column-parallel linear layers' backward communication
    (``LinearWithGradAccumulationAndAsyncCommunication.backward``, ``megatron/mpu/layers.py``
    lines 239-305 at d898a8991d, 2022-05-25; on unless ``--no-async-tensor-model-parallel-
    allreduce``; absent from the 2021 code, de7dc40f88): the input gradient's all-reduce (no SP)
    or reduce-scatter (SP) is launched ``async_op=True`` and runs beside the weight-gradient
    GEMM; with SP the all-gather of the saved input runs beside the data-gradient GEMM. Forward
    collectives stay blocking. While both run, the GEMM has the SMs NCCL leaves it
    (``comm_sms`` = NCCL channels), the collective runs at full speed (``pair_time_s``)."""

    comm_sms: int = NCCL_A100_CHANNELS

    def __post_init__(self) -> None:
        if self.comm_sms < 0:
            raise ValueError(f"comm_sms must be >= 0, got {self.comm_sms}")

    def gemm_factor(self, num_sms: int | None) -> float:
        if num_sms is None or self.comm_sms == 0:
            return 1.0
        if self.comm_sms >= num_sms:
            raise ValueError(f"NCCL on {self.comm_sms} SMs leaves no SM of {num_sms} for the GEMM")
        return num_sms / (num_sms - self.comm_sms)


def async_backward_pairs(ops: Sequence[Op]) -> list[tuple[int, int]]:
    """(collective index, GEMM index) pairs :class:`AsyncBackwardOverlap` runs side by side: an
    ``<name>.input.all_gather`` and the ``<name>.dgrad`` GEMM right after it; an
    ``<name>.dgrad.all_reduce`` / ``.dgrad.reduce_scatter`` and the ``.wgrad`` GEMM right after."""
    pairs = []
    for i in range(len(ops) - 1):
        op, nxt = ops[i], ops[i + 1]
        if not op.kind.is_communication or nxt.kind is not OpKind.MATMUL:
            continue
        gathers = op.name.endswith(".input.all_gather") and nxt.name.endswith(".dgrad")
        reduces = (op.name.endswith((".dgrad.all_reduce", ".dgrad.reduce_scatter"))
                   and nxt.name.endswith(".wgrad"))
        if gathers or reduces:
            pairs.append((i, i + 1))
    return pairs


def layer_time_s(ops: Sequence[Op], op_time_s: Callable[[Op], float],
                 collective_time_s: Callable[[Op], float],
                 overlap: TPOverlap | AsyncBackwardOverlap | None, *,
                 tp: int, num_sms: int | None) -> float:
    """One layer pass on one TP rank: its ops in order, overlapped pairs as above."""
    times = [collective_time_s(op) if op.kind.is_communication else op_time_s(op) for op in ops]
    if overlap is None or tp < 2:
        return sum(times)
    if isinstance(overlap, AsyncBackwardOverlap):
        factor, paired, total = overlap.gemm_factor(num_sms), set(), 0.0
        for comm, gemm in async_backward_pairs(ops):
            total += pair_time_s(times[gemm], times[comm], factor)
            paired.update((comm, gemm))
        return total + sum(t for i, t in enumerate(times) if i not in paired)
    total, paired = 0.0, set()
    for comm, gemm, method in overlap_pairs(ops, overlap.rs_method):
        chunks = overlap.pipeline_splits if method == "pipeline" else tp
        total += overlapped_time_s(method, times[gemm], times[comm], chunks=chunks,
                                   gemm_factor=overlap.gemm_factor(method, num_sms,
                                                                   te_gemm_name(ops[gemm])),
                                   comm_factor=overlap.comm_factor)
        paired.update((comm, gemm))
    return total + sum(t for i, t in enumerate(times) if i not in paired)
