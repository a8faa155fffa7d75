"""Model presets: published shapes give the published parameter counts; lookups forgive spelling."""

from __future__ import annotations

import dataclasses

import pytest

from clustersim.errors import ConfigError
from clustersim.workloads.models import ModelConfig, get_model, model_names


@pytest.mark.parametrize("name, published, rel", [
    ("llama2-7b", 6.74e9, 0.01),     # Touvron et al. 2023; HF card 6,738,415,616
    ("llama2-13b", 13.0e9, 0.01),
    ("llama2-70b", 68.98e9, 0.01),
    ("llama3-8b", 8.03e9, 0.01),     # Llama 3 model card
    ("llama3-70b", 70.6e9, 0.01),
    ("gpt3-175b", 174.6e9, 0.01),    # Brown et al. 2020 ("175B"; 174.6e9 with these shapes)
    ("mixtral-8x7b", 46.7e9, 0.02),  # Jiang et al. 2024
])
def test_parameter_totals_match_published(name, published, rel):
    assert get_model(name).params_total == pytest.approx(published, rel=rel)


def test_mixtral_active_parameters_match_published():
    mixtral = get_model("mixtral-8x7b")
    assert mixtral.params_active == pytest.approx(12.9e9, rel=0.02)
    assert mixtral.params_active < mixtral.params_total


def test_llama2_7b_layer_is_attention_swiglu_and_two_rmsnorms():
    m = get_model("llama2-7b")
    h, f = 4096, 11008
    assert (m.head_dim, m.kv_dim) == (128, 4096)
    assert m.params_per_layer == 4 * h * h + 3 * h * f + 2 * h
    assert m.params_total == 32 * m.params_per_layer + 2 * 32000 * h + h


def test_gqa_shrinks_key_value_projections():
    m = get_model("llama2-70b")
    assert m.kv_dim == 8 * 128
    assert m.params_attention_per_layer == 2 * 8192 * 8192 + 2 * 8192 * 1024


def test_params_matmul_is_layer_projections_plus_lm_head():
    gpt3 = get_model("gpt3-175b")
    h, layers, vocab = 12288, 96, 50257
    # Narayanan et al. 2021 eq. 3: 72 L h^2 + 6 V h per token in training = 6 x (12 L h^2 + V h).
    assert gpt3.params_matmul == 12 * layers * h * h + vocab * h

    mixtral = get_model("mixtral-8x7b")
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    top2_experts = 2 * 3 * 4096 * 14336
    router = 4096 * 8
    assert mixtral.params_matmul == 32 * (attention + top2_experts + router) + 32000 * 4096


def test_dense_models_use_every_parameter():
    for name in ("llama2-7b", "gpt3-175b", "tiny"):
        model = get_model(name)
        assert model.params_active == model.params_total


@pytest.mark.parametrize("spelling", ["llama2-7b", "LLaMA-2-7B", "llama2_7b", "Llama 2 7b",
                                      "meta-llama/Llama-2-7b-hf"])
def test_get_model_forgives_case_and_separators(spelling):
    assert get_model(spelling) is get_model("llama2-7b")


def test_get_model_aliases():
    assert get_model("GPT3") is get_model("gpt3-175b")
    assert get_model("mixtral").num_experts == 8


def test_unknown_model_names_the_nearest_and_the_valid_ones():
    with pytest.raises(ValueError) as info:
        get_model("llama2-7c")
    message = str(info.value)
    assert "did you mean 'llama2-7b'" in message
    for name in model_names():
        assert name in message
    assert isinstance(info.value, ConfigError)


def test_every_preset_has_a_source_and_is_frozen():
    for name in model_names():
        model = get_model(name)
        assert model.source, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            model.hidden_size = 1  # type: ignore[misc]


def test_bad_shapes_are_rejected_with_the_field():
    base = dataclasses.asdict(get_model("tiny"))
    with pytest.raises(ValueError, match="num_heads.*num_kv_heads"):
        ModelConfig(**{**base, "num_kv_heads": 3})
    with pytest.raises(ValueError, match="hidden_size \\(64\\) must be a multiple of num_heads \\(5\\)"):
        ModelConfig(**{**base, "num_heads": 5, "num_kv_heads": 5})
    with pytest.raises(ValueError, match="norm must be one of"):
        ModelConfig(**{**base, "norm": "batchnorm"})
    with pytest.raises(ValueError, match="experts_per_token"):
        ModelConfig(**{**base, "experts_per_token": 2})
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        ModelConfig(**{**base, "hidden_size": 0})


def test_from_dict_names_unknown_keys_with_a_suggestion():
    entry = {**dataclasses.asdict(get_model("tiny")), "num_layer": 3}
    with pytest.raises(ValueError, match="'num_layer' \\(did you mean 'num_layers'\\?\\)"):
        ModelConfig.from_dict(entry)
