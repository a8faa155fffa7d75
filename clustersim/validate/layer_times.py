"""One transformer layer's forward and backward time against published per-layer measurements.

Fidelity: analytical per op (each op's FLOPs and bytes timed by the device, the calibration
profile's A100 kernels), collectives on the idle fabric (NCCL model), summed in launch order
with the overlaps the framework makes. The same ops and timings as a ``granularity: layer``
training step (``training_step._StepCompiler.fused_time_s``), taken one layer at a time so that
they can be compared with a layer-level measurement, which no end-to-end figure can do.

Reference: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models" (arXiv 2205.05198, MLSys 2023), Table 4: forward and backward time of one layer of
their 22B GPT (Table 3: 64 heads, hidden 6144, 48 layers, TP 8, PP 1, 8 GPUs, global batch 4,
micro-batch 4; sequence 2048, vocabulary 51,200, mixed precision on Selene's DGX A100 80GB
nodes: NVLink + NVSwitch), with and without sequence parallelism and selective or full
recomputation. The layer's forward FLOPs per GPU (``(24 b s h^2 + 4 b s^2 h) / t``, 0.98
TFLOP) in 7.7 ms is 127 TFLOP/s, the 41 % their Table 5 reports for the whole model, which
fixes the micro-batch the table was measured at (4, Table 3).

The code they measured: Megatron-LM at the merge of sequence parallelism (``d898a8991d``,
2022-05-25). Its kernels are Megatron 2021's with a few changes (``MEGATRON_2022_KERNELS``):
``CoreAttention`` (``megatron/model/transformer.py``) still writes the full score matrix with
``baddbmm``, runs the fused causal scale-mask-softmax (now for ``s_kv <= 4096``,
``fused_softmax.py:171``), ``torch.nn.Dropout`` over the probabilities and the context ``bmm``;
the persistent (apex ``FastLayerNorm``) LayerNorm for hidden 6144 (``fused_layer_norm.py:84``),
whose backward is one kernel; and, new, the **backward of every column-parallel linear layer
overlaps its tensor-parallel communication** (``LinearWithGradAccumulationAndAsyncCommunication
.backward``, ``megatron/mpu/layers.py:239-305``): without sequence parallelism the all-reduce of
the input gradient runs beside the weight-gradient GEMM (``--no-async-tensor-model-parallel-
allreduce`` turns it off; on by default); with it, the all-gather of the saved input runs beside
the data-gradient GEMM and the reduce-scatter of the input gradient beside the weight-gradient
GEMM. Forward collectives and the backward all-gather into row-parallel layers stay blocking.
The paper itself credits this overlap for full recomputation costing 39 % rather than 33 %.

The overlap is ``tp_overlap.AsyncBackwardOverlap`` (``kernels.tp_async_backward`` of a training
run): an overlapped pair takes ``tp_overlap.pair_time_s``, the GEMM on the SMs NCCL leaves it
(one thread block per channel, the channel count of the profile's fitted NCCL graph), the
collective at full speed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from clustersim.hardware.cluster import Cluster
from clustersim.ops import Op, OpKind
from clustersim.workloads import kernels as kern
from clustersim.workloads import transformer as tfm
from clustersim.workloads.idle_collectives import idle_collective_time_s
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.tp_overlap import AsyncBackwardOverlap, layer_time_s

SOURCE = ("Korthikanti et al. 2022, 'Reducing Activation Recomputation in Large Transformer "
          "Models', arXiv 2205.05198, Table 4 (22B model, one transformer layer, A100 80GB, "
          "Selene); configuration from Table 3 and section 6")


@dataclass(frozen=True)
class PublishedLayerTime:
    """One row of a published per-layer timing table (milliseconds, as printed)."""

    experiment: str
    sequence_parallel: bool
    recompute: str            # "none" | "selective" | "full"
    forward_ms: float
    backward_ms: float
    combined_ms: float
    overhead_percent: float | None   # vs the first row, as printed (None: the baseline)


# Korthikanti et al. 2022, Table 4 (values as printed, 0.1 ms resolution).
KORTHIKANTI_2022_TABLE4 = (
    PublishedLayerTime("Baseline no recompute", False, "none", 7.7, 11.9, 19.6, None),
    PublishedLayerTime("Sequence Parallelism", True, "none", 7.2, 11.8, 19.0, -3.0),
    PublishedLayerTime("Baseline with recompute", False, "full", 7.7, 19.5, 27.2, 39.0),
    PublishedLayerTime("Selective Recompute", False, "selective", 7.7, 13.2, 20.9, 7.0),
    PublishedLayerTime("Selective + Sequence", True, "selective", 7.2, 13.1, 20.3, 4.0),
)

# Table 3 and section 6: the 22B model, its micro-batch and tensor-parallel size.
GPT_22B = ModelConfig(
    name="korthikanti2022-gpt-22b", hidden_size=6144, num_layers=48, num_heads=64,
    num_kv_heads=64, ffn_hidden_size=4 * 6144, vocab_size=51200, max_seq_len=2048,
    gated_mlp=False, norm="layernorm", tied_embeddings=True, bias=True,
    position_embedding="learned", source=SOURCE)
MICRO_BATCH_22B, SEQ_LEN_22B, TP_22B = 4, 2048, 8

# Megatron-LM d898a8991d (module docstring): unfused attention with the fused causal softmax
# (s_kv <= 4096), dropout 0.1 on the probabilities and after each block (GPT defaults), fused
# bias-dropout-add and bias-GeLU, one-kernel (persistent) LayerNorm backward.
MEGATRON_2022_KERNELS = kern.KernelChoices(
    attention="unfused", attention_dropout=0.1, hidden_dropout=0.1, fused_softmax=True,
    fused_softmax_max_kv=4096, fused_bias_dropout_add=True, fused_bias_gelu=True,
    fused_norm_backward=True)

# What carries the time: the share of each group in a pass.
GROUPS = ("linear GEMMs", "attention bmm", "score-matrix passes", "other memory-bound",
          "TP collectives")


def op_group(op: Op) -> str:
    """Which of ``GROUPS`` an op belongs to."""
    if op.kind.is_communication:
        return "TP collectives"
    if op.kind is OpKind.MATMUL:
        return "attention bmm" if op.name.startswith("attn.") else "linear GEMMs"
    scores = ("attn.scale_mask_softmax", "attn.softmax.bwd", "attn.dropout", "attn.dropout.bwd",
              "attn.cast_fp32", "attn.scale", "attn.mask", "attn.softmax", "attn.cast_back",
              "attn.cast_back.bwd", "attn.mask.bwd", "attn.scale.bwd", "attn.cast_fp32.bwd")
    return "score-matrix passes" if op.name in scores else "other memory-bound"


@dataclass(frozen=True)
class LayerTimes:
    """Simulated times of one layer pass pair on one TP rank."""

    forward_s: float
    backward_s: float     # includes the recomputation, as the paper's backward column does
    recompute_s: float    # the recomputed ops' own time (phase "recompute")
    ops: pd.DataFrame     # one row per op: pass, name, kind, group, phase, time_s

    def group_times_s(self, which: str) -> dict[str, float]:
        """Seconds per ``GROUPS`` entry in the ``fwd`` or ``bwd`` pass (stand-alone op times)."""
        rows = self.ops[self.ops["pass"] == which]
        return {g: float(rows.loc[rows["group"] == g, "time_s"].sum()) for g in GROUPS}


def nccl_channels(cluster: Cluster, tp: int) -> int:
    """Channels of the NCCL graph ``cluster`` uses for a ``tp``-GPU group (0: no NCCL model):
    the SMs an NCCL kernel occupies, one thread block per channel."""
    model = getattr(cluster.collective_model, "model", None)
    return model(tp).graph.channels if model is not None and tp > 1 else 0


def simulate_layer(cluster: Cluster, *, model: ModelConfig = GPT_22B,
                   micro_batch: int = MICRO_BATCH_22B, seq_len: int = SEQ_LEN_22B,
                   tp: int = TP_22B, sequence_parallel: bool = False, recompute: str = "none",
                   choices: kern.KernelChoices = MEGATRON_2022_KERNELS, dtype: str = "fp16",
                   async_backward: bool = True) -> LayerTimes:
    """Forward and backward of one layer on TP rank 0 of ``cluster``'s first ``tp`` devices,
    each pass timed by ``tp_overlap.layer_time_s`` as a layer-granularity training step does
    (``async_backward``: Megatron 2022's :class:`AsyncBackwardOverlap` with NCCL's channels)."""
    if tp > cluster.num_devices:
        raise ValueError(f"tp={tp} needs {tp} devices, the cluster has {cluster.num_devices}")
    device, group = cluster.devices[0], list(range(tp))
    overlap = AsyncBackwardOverlap(nccl_channels(cluster, tp)) if async_backward else None
    kw = dict(micro_batch=micro_batch, seq_len=seq_len, tp=tp,
              sequence_parallel=sequence_parallel, dtype=dtype)
    expand: Callable[[list[Op]], list[Op]] = lambda ops: kern.expand_layer_ops(
        ops, choices, bias=model.bias, hidden_size=model.hidden_size,
        tokens=micro_batch * seq_len)
    passes = {"fwd": expand(tfm.layer_forward(model, **kw)),
              "bwd": expand(tfm.layer_backward(model, recompute=recompute, **kw))}

    def op_time(op: Op) -> float:
        if op.kind.is_communication:
            return idle_collective_time_s(cluster, [(op.labels["collective"], group,
                                                     op.bytes_read)])
        return device.op_time(op)

    rows, totals = [], {}
    for name, ops in passes.items():
        times = [op_time(op) for op in ops]
        totals[name] = layer_time_s(ops, op_time, op_time, overlap, tp=tp,
                                    num_sms=getattr(device, "num_sms", None))
        rows += [{"pass": name, "name": op.name, "kind": op.kind.value, "group": op_group(op),
                  "phase": op.labels.get("phase"), "time_s": t} for op, t in zip(ops, times)]
    table = pd.DataFrame(rows)
    recomputed = float(table.loc[table["phase"] == "recompute", "time_s"].sum())
    return LayerTimes(totals["fwd"], totals["bwd"], recomputed, table)


def compare_table4(cluster: Cluster, *, async_backward: bool = True,
                   rows: Sequence[PublishedLayerTime] = KORTHIKANTI_2022_TABLE4) -> pd.DataFrame:
    """Each published row against the simulated layer: times in ms, errors in % (+: the
    simulator is faster, i.e. optimistic, as in ``clustersim validate --published``)."""
    out = []
    for row in rows:
        sim = simulate_layer(cluster, sequence_parallel=row.sequence_parallel,
                             recompute=row.recompute, async_backward=async_backward)
        fwd_ms, bwd_ms = 1e3 * sim.forward_s, 1e3 * sim.backward_s
        out.append({"experiment": row.experiment, "sp": row.sequence_parallel,
                    "recompute": row.recompute,
                    "published_fwd_ms": row.forward_ms, "simulated_fwd_ms": fwd_ms,
                    "fwd_error_pct": 100 * (row.forward_ms / fwd_ms - 1),
                    "published_bwd_ms": row.backward_ms, "simulated_bwd_ms": bwd_ms,
                    "bwd_error_pct": 100 * (row.backward_ms / bwd_ms - 1),
                    "published_total_ms": row.combined_ms, "simulated_total_ms": fwd_ms + bwd_ms,
                    "total_error_pct": 100 * (row.combined_ms / (fwd_ms + bwd_ms) - 1),
                    "simulated_recompute_ms": 1e3 * sim.recompute_s})
    return pd.DataFrame(out)


# --- the attention module alone: Dao et al. 2022 (FlashAttention), Appendix E.6 ----------------

FLASHATTENTION_SOURCE = (
    "Dao et al. 2022, 'FlashAttention: Fast and Memory-Efficient Exact Attention with "
    "IO-Awareness', arXiv 2205.14135, Appendix E.6, 'Megatron' rows of Tables 15, 16 (dropout "
    "0.1) and 18, 19 (no dropout), no masking: one A100 40GB, fp16, batch 16, 8 heads of dim 64, "
    "mean of 100 calls")


@dataclass(frozen=True)
class PublishedAttentionTime:
    """Megatron's attention module (QK^T, fused softmax, dropout, PV) timed alone, ms."""

    seq_len: int
    dropout: bool
    forward_ms: float
    backward_ms: float


FLASHATTENTION_2022_MEGATRON = (
    PublishedAttentionTime(1024, False, 1.33, 2.59), PublishedAttentionTime(2048, False, 4.28, 8.86),
    PublishedAttentionTime(1024, True, 1.88, 2.94), PublishedAttentionTime(2048, True, 6.56, 10.80),
)
A100_40GB_HBM_BYTES_PER_S = 1.555e12  # A100-SXM4-40GB datasheet (the preset's figure)


def compare_attention_module(cluster: Cluster,
                             rows: Sequence[PublishedAttentionTime] = FLASHATTENTION_2022_MEGATRON,
                             *, batch: int = 16, heads: int = 8, head_dim: int = 64) -> pd.DataFrame:
    """Megatron's unfused attention (``attention_kernels``) on ``cluster``'s device against Dao
    et al.'s timings (+: the simulator is faster). Their GPU is the 40GB A100; pass a cluster
    whose device has its HBM bandwidth (``_a100_node(hbm_bytes_per_s=...)``: the 80GB profile's
    fitted efficiencies at the 40GB part's bandwidth, an assumption)."""
    from clustersim.workloads.attention_kernels import (unfused_attention_backward,
                                                        unfused_attention_forward)

    device, out = cluster.devices[0], []
    for row in rows:
        kw = dict(dropout_p=0.1 if row.dropout else 0.0, fused_softmax=True, causal=False)
        fwd = unfused_attention_forward(batch, heads, row.seq_len, row.seq_len, head_dim, "fp16", **kw)
        bwd = unfused_attention_backward(batch, heads, row.seq_len, row.seq_len, head_dim, "fp16",
                                         **kw)
        fwd_ms = 1e3 * sum(device.op_time(op) for op in fwd)
        bwd_ms = 1e3 * sum(device.op_time(op) for op in bwd)
        out.append({"seq_len": row.seq_len, "dropout": row.dropout,
                    "published_fwd_ms": row.forward_ms, "simulated_fwd_ms": fwd_ms,
                    "fwd_error_pct": 100 * (row.forward_ms / fwd_ms - 1),
                    "published_bwd_ms": row.backward_ms, "simulated_bwd_ms": bwd_ms,
                    "bwd_error_pct": 100 * (row.backward_ms / bwd_ms - 1)})
    return pd.DataFrame(out)


def _a100_node(hbm_bytes_per_s: float | None = None) -> Cluster:
    from pathlib import Path

    from clustersim.hardware.cluster_config import ClusterConfig

    root = Path(__file__).resolve().parents[2]
    overrides = {} if hbm_bytes_per_s is None else {"hbm_bandwidth_bytes_per_s": hbm_bytes_per_s}
    return ClusterConfig(node="DGX-A100", nodes=1, profile="profiles/a100-sxm4-80gb.yaml",
                         collectives="nccl", gpu_overrides=overrides).build(base_dir=str(root))


def main() -> None:  # ``python -m clustersim.validate.layer_times``: the comparison as text
    cluster = _a100_node()
    pd.set_option("display.width", 200)
    for overlap in (True, False):
        table = compare_table4(cluster, async_backward=overlap)
        sys.stdout.write(f"\nasync backward overlap: {overlap}\n"
                         f"{table.round(2).to_string(index=False)}\n")
    base = simulate_layer(cluster)
    for which in ("fwd", "bwd"):
        shares = {g: round(1e3 * t, 3) for g, t in base.group_times_s(which).items()}
        sys.stdout.write(f"baseline {which} ms by group: {shares}\n")
    attention = compare_attention_module(_a100_node(A100_40GB_HBM_BYTES_PER_S))
    sys.stdout.write(f"\nMegatron attention module vs {FLASHATTENTION_SOURCE}\n"
                     f"{attention.round(2).to_string(index=False)}\n")


if __name__ == "__main__":
    main()
