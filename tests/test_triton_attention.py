"""The 2022 Triton FlashAttention kernel (``attention: flash_triton``, llm-foundry's
``attn_impl: triton``): its time against FlashAttention-2's by the kernel-level ratios of
Dao 2023, section 4.1, its memory like flash's, and the step it makes slower, never faster."""

import numpy as np
import pytest

from clustersim import ops
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.ops import OpKind
from clustersim.workloads import kernels
from clustersim.workloads.attention_kernels import (TRITON_BACKWARD_SLOWDOWN,
                                                    TRITON_FORWARD_SLOWDOWN,
                                                    triton_flash_attention)
from clustersim.workloads.training import TrainingWorkload

REL = 1e-9


@pytest.fixture(scope="module")
def a100():
    return ClusterConfig(node="DGX-A100", nodes=1, gpus_per_node=1).build().devices[0]


@pytest.mark.parametrize("backward, slowdown", [(False, TRITON_FORWARD_SLOWDOWN),
                                                (True, TRITON_BACKWARD_SLOWDOWN)])
@pytest.mark.parametrize("causal", [True, False])
def test_kernel_takes_the_papers_ratio_of_flashattention2s_time(a100, backward, slowdown, causal):
    op = ops.attention(6, 32, 32, 2048, 2048, 128, causal=causal, backward=backward,
                       name="attn_core")
    pair = triton_flash_attention(op)
    assert pair[0] is op
    launch = a100.kernel_launch_overhead_s
    fused = a100.op_time(op) - launch
    triton = sum(a100.op_time(o) for o in pair) - 2 * launch
    assert triton == pytest.approx(slowdown * fused, rel=REL)


def test_extra_op_keeps_shape_mask_and_direction_and_moves_no_bytes():
    op = ops.attention(2, 8, 8, 512, 512, 64, causal=True, backward=True, name="attn_core.bwd",
                       layer=3)
    extra = triton_flash_attention(op)[1]
    assert (extra.kind, extra.shape, extra.causal, extra.backward) == (
        OpKind.ATTENTION, op.shape, op.causal, op.backward)
    assert extra.bytes_total == 0
    assert extra.flops == pytest.approx((TRITON_BACKWARD_SLOWDOWN - 1) * op.flops, rel=REL)
    assert extra.labels["layer"] == 3 and extra.name == "attn_core.bwd.triton"


def test_refuses_an_op_that_is_not_attention():
    with pytest.raises(ValueError, match="not attention"):
        triton_flash_attention(ops.matmul(8, 8, 8, name="qkv_proj"))


def test_choice_is_a_fused_kernel_and_only_attention_ops_change():
    flash = kernels.KernelChoices(attention="flash")
    triton = kernels.KernelsSpec(attention="flash_triton").choices()
    assert triton.flash and flash.flash      # no score matrix in memory either way
    layer = [ops.matmul(256, 768, 256, name="qkv_proj"),
             ops.attention(1, 4, 4, 256, 256, 64, causal=True, name="attn_core"),
             ops.attention(1, 4, 4, 256, 256, 64, causal=True, backward=True,
                           name="attn_core.bwd")]
    base = kernels.expand_layer_ops(layer, flash, bias=False, hidden_size=256, tokens=256)
    slow = kernels.expand_layer_ops(layer, triton, bias=False, hidden_size=256, tokens=256)
    assert [o.name for o in slow] == ["qkv_proj", "attn_core", "attn_core.triton",
                                      "attn_core.bwd", "attn_core.bwd.triton"]
    assert [o for o in slow if not o.name.endswith(".triton")] == base


def _step(attention):
    work = TrainingWorkload(kind="training", model="tiny", seq_len=128, micro_batch_size=2,
                            global_batch_size=4, parallel={"dp": 2},
                            kernels={"attention": attention})
    cluster = ClusterConfig(node="DGX-A100", nodes=1, gpus_per_node=2).build()
    work.check(cluster)
    return work.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics


def test_step_is_slower_by_at_most_the_attention_it_slows_and_keeps_flash_memory():
    flash, triton = _step("flash"), _step("flash_triton")
    assert triton["step_time_s"] > flash["step_time_s"]
    assert triton["activation_gib_per_layer"] == pytest.approx(
        flash["activation_gib_per_layer"], rel=REL)
    # never more than every attention op taking the backward (larger) slowdown
    assert triton["step_time_s"] < TRITON_BACKWARD_SLOWDOWN * flash["step_time_s"]


def test_triton_kernel_with_attention_dropout_is_refused_before_the_run():
    from clustersim.errors import ConfigError
    from clustersim.experiment import expand

    spec = {"name": "x", "cluster": {"node": "DGX-A100", "nodes": 1},
            "workload": {"kind": "training", "model": "tiny", "seq_len": 128,
                         "micro_batch_size": 1, "global_batch_size": 8, "parallel": {"dp": 8},
                         "kernels": {"attention": "flash_triton", "attention_dropout": 0.1}}}
    with pytest.raises((ConfigError, ValueError), match="no dropout"):
        expand(spec, file="x.yaml")
