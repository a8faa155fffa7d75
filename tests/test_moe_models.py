"""DeepSeek-style MoE shapes: shared experts in parameters, FLOPs and ops."""

import pytest

from clustersim.workloads import transformer as tf
from clustersim.workloads.models import ModelConfig, get_model


@pytest.mark.parametrize("name, total, active", [
    ("deepseek-v2-lite", 15.7e9, 2.4e9),   # DeepSeek-V2 paper, appendix B
    ("deepseek-v3", 671e9, 37e9),          # DeepSeek-V3 report, section 4.2
])
def test_published_totals_within_the_stated_approximations(name, total, active):
    model = get_model(name)
    assert model.num_shared_experts > 0
    # MHA stands for MLA and the first dense layers are MoE layers (see the preset's source)
    assert model.params_total == pytest.approx(total, rel=0.06)
    assert model.params_active == pytest.approx(active, rel=0.15)


def test_shared_experts_are_in_the_ops_and_add_up_to_model_flops():
    model = ModelConfig(name="tiny-deepseek", hidden_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=4, ffn_hidden_size=32, vocab_size=256, max_seq_len=128,
                        num_experts=8, experts_per_token=2, num_shared_experts=2)
    shape = dict(micro_batch=2, seq_len=64, tp=2, sequence_parallel=True)
    per_rank = sum(op.flops for layer in range(2) for op in
                   tf.layer_forward(model, layer=layer, **shape)
                   + tf.layer_backward(model, layer=layer, **shape)
                   if op.kind.value in ("matmul", "attention"))
    head = sum(op.flops for r in range(2) for op in
               tf.lm_head_forward(model, tp_rank=r, **shape)
               + tf.lm_head_backward(model, tp_rank=r, **shape)
               if op.kind.value in ("matmul", "attention"))
    expected = tf.model_flops_per_token(model, 64) * 2 * 64
    assert per_rank * 2 + head == pytest.approx(expected, rel=1e-12)
    names = [op.name for op in tf.layer_forward(model, **shape)]
    assert "expertshared.up_gate" in names


def test_negative_shared_experts_are_refused():
    with pytest.raises(ValueError, match="num_shared_experts"):
        ModelConfig(name="x", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=4,
                    ffn_hidden_size=32, vocab_size=8, max_seq_len=8, num_experts=4,
                    num_shared_experts=-1)
