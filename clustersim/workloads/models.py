"""Transformer model configs (GPT-3, LLaMA-2/3, Mixtral...) and their parameter counts.

A :class:`ModelConfig` is the shape of a decoder-only transformer; presets with their published
shapes and sources live in ``presets/models.yaml`` and are found by :func:`get_model`.

Parameter counting conventions (each count is exact for the architecture the fields describe):

* a layer holds attention (Q, K, V, O projections; K and V are ``num_kv_heads`` wide under GQA),
  an MLP (two matrices, or three with a gated/SwiGLU MLP, per expert, plus the router for MoE;
  DeepSeekMoE's shared experts are experts every token visits)
  and two norms (LayerNorm: weight and bias; RMSNorm: weight only);
* ``bias=True`` adds the biases of every projection (GPT-2/3 style);
* the model adds the token embedding, learned position embeddings (when
  ``position_embedding="learned"``), a final norm and the LM head (none when tied).

``params_matmul`` is the ``N`` of "6N FLOPs per token" (Kaplan et al. 2020; Narayanan et al. 2021,
eq. 3): the weights that a token multiplies in matmuls. It is the layers' projection weights
(Q, K, V, O; the MLP matrices of the ``experts_per_token`` experts a token visits; the MoE router)
plus the LM head's ``vocab_size x hidden_size`` (counted even when tied to the embedding, since
the head is a matmul either way). It excludes the input embedding and position embedding
lookups, norm weights and biases, which cost no matmul FLOPs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import re
from dataclasses import dataclass
from typing import Any, Mapping

from clustersim.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
POSITION_EMBEDDINGS = ("rope", "learned")


class ModelConfigError(ConfigError, ValueError):
    """A model config or model name that is not valid (also a ``ValueError``)."""


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a decoder-only transformer."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_seq_len: int
    gated_mlp: bool = True
    norm: str = "rmsnorm"
    tied_embeddings: bool = False
    num_experts: int = 1
    experts_per_token: int = 1
    num_shared_experts: int = 0      # DeepSeekMoE: experts every token visits, besides top-k
    bias: bool = False
    position_embedding: str = "rope"
    source: str = ""

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size",
                    "vocab_size", "max_seq_len", "num_experts", "experts_per_token"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"{where}: {key} must be a positive integer, got {value!r}",
                                       key=key)
        if isinstance(self.num_shared_experts, bool) or not isinstance(self.num_shared_experts, int) \
                or self.num_shared_experts < 0:
            raise ModelConfigError(f"{where}: num_shared_experts must be an integer >= 0, got "
                                   f"{self.num_shared_experts!r}", key="num_shared_experts")
        if self.hidden_size % self.num_heads:
            raise ModelConfigError(f"{where}: hidden_size ({self.hidden_size}) must be a multiple "
                                   f"of num_heads ({self.num_heads})", key="num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(f"{where}: num_heads ({self.num_heads}) must be a multiple of "
                                   f"num_kv_heads ({self.num_kv_heads})", key="num_kv_heads")
        if self.experts_per_token > self.num_experts:
            raise ModelConfigError(f"{where}: experts_per_token ({self.experts_per_token}) cannot "
                                   f"exceed num_experts ({self.num_experts})",
                                   key="experts_per_token")
        if self.norm not in NORMS:
            raise ModelConfigError(f"{where}: norm must be one of {NORMS}, got {self.norm!r}",
                                   key="norm")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ModelConfigError(f"{where}: position_embedding must be one of "
                                   f"{POSITION_EMBEDDINGS}, got {self.position_embedding!r}",
                                   key="position_embedding")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str | None = None) -> "ModelConfig":
        """Build from a mapping (a YAML entry); unknown keys are an error naming the valid ones."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k != "aliases"}
        if name is not None:
            values.setdefault("name", name)
        unknown = sorted(set(values) - fields)
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, fields, 1))
                     else repr(k) for k in unknown]
            raise ModelConfigError(f"model {values.get('name', '?')!r}: unknown key(s) "
                                   f"{', '.join(hints)}; valid keys are {sorted(fields)}",
                                   key=unknown[0])
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in values)
        if missing:
            raise ModelConfigError(f"model {values.get('name', '?')!r}: missing key(s) {missing}",
                                   key=missing[0])
        return cls(**values)

    # --- shapes -------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        """Width of the query projection (num_heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections (num_kv_heads x head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def mlp_matrices(self) -> int:
        """Weight matrices per MLP (expert): 3 for a gated (SwiGLU) MLP, else 2."""
        return 3 if self.gated_mlp else 2

    # --- parameters per layer -----------------------------------------------------------------

    @property
    def params_attention_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.q_dim, self.kv_dim
        weights = h * (q + 2 * kv) + q * h
        biases = (q + 2 * kv) + h if self.bias else 0
        return weights + biases

    @property
    def params_expert(self) -> int:
        """Parameters of one expert's MLP (of the MLP itself for a dense model)."""
        h, f = self.hidden_size, self.ffn_hidden_size
        weights = self.mlp_matrices * h * f
        biases = (self.mlp_matrices - 1) * f + h if self.bias else 0
        return weights + biases

    @property
    def params_router_per_layer(self) -> int:
        return self.hidden_size * self.num_experts if self.is_moe else 0

    @property
    def params_mlp_per_layer(self) -> int:
        """The MLP of one layer: all routed and shared experts and the router for MoE."""
        return ((self.num_experts + self.num_shared_experts) * self.params_expert
                + self.params_router_per_layer)

    @property
    def params_norm(self) -> int:
        """Parameters of one norm: weight (and bias for LayerNorm)."""
        return (2 if self.norm == "layernorm" else 1) * self.hidden_size

    @property
    def params_norms_per_layer(self) -> int:
        return 2 * self.params_norm

    @property
    def params_per_layer(self) -> int:
        return self.params_attention_per_layer + self.params_mlp_per_layer + self.params_norms_per_layer

    @property
    def params_matmul_per_layer(self) -> int:
        """Matmul weights one token uses in one layer (top-k experts only; no biases, no norms)."""
        h, f, q, kv = self.hidden_size, self.ffn_hidden_size, self.q_dim, self.kv_dim
        attention = h * (q + 2 * kv) + q * h
        mlp = (self.experts_per_token + self.num_shared_experts) * self.mlp_matrices * h * f
        return attention + mlp + self.params_router_per_layer

    # --- whole model --------------------------------------------------------------------------

    @property
    def params_embedding(self) -> int:
        """Token embedding plus learned position embeddings (if any)."""
        positions = self.max_seq_len * self.hidden_size if self.position_embedding == "learned" else 0
        return self.vocab_size * self.hidden_size + positions

    @property
    def params_lm_head(self) -> int:
        """Separate LM head weights (0 when tied to the token embedding)."""
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @property
    def params_total(self) -> int:
        return (self.num_layers * self.params_per_layer + self.params_embedding
                + self.params_norm + self.params_lm_head)

    @property
    def params_active(self) -> int:
        """Parameters a token touches: the total without the experts it does not visit."""
        idle_experts = self.num_experts - self.experts_per_token
        return self.params_total - self.num_layers * idle_experts * self.params_expert

    @property
    def params_matmul(self) -> int:
        """N of "6N FLOPs per token": layers' matmul weights (top-k experts) plus the LM head."""
        return self.num_layers * self.params_matmul_per_layer + self.vocab_size * self.hidden_size


# --- presets --------------------------------------------------------------------------------

def _key(name: str) -> str:
    """Normalised lookup key: lower case without '-', '_', '.', '/' or spaces."""
    return re.sub(r"[-_./\s]", "", name.lower())


@functools.cache
def _presets() -> tuple[dict[str, ModelConfig], dict[str, str]]:
    import yaml

    text = importlib.resources.files("clustersim.workloads").joinpath("presets/models.yaml").read_text()
    models: dict[str, ModelConfig] = {}
    lookup: dict[str, str] = {}
    for name, entry in yaml.safe_load(text).items():
        models[name] = ModelConfig.from_dict(entry, name=name)
        for alias in [name, *entry.get("aliases", [])]:
            key = _key(alias)
            if lookup.get(key, name) != name:
                raise ModelConfigError(f"alias {alias!r} of {name!r} is already used by "
                                       f"{lookup[key]!r}", file="models.yaml", key=name)
            lookup[key] = name
    return models, lookup


def model_names() -> list[str]:
    """Canonical names of the preset models."""
    return sorted(_presets()[0])


def get_model(name: str) -> ModelConfig:
    """A preset by name or alias, case-insensitively ("LLaMA-2-7B", "llama2_7b", "gpt3")."""
    models, lookup = _presets()
    canonical = lookup.get(_key(name))
    if canonical is not None:
        return models[canonical]
    close = difflib.get_close_matches(_key(name), list(lookup), n=1, cutoff=0.5)
    hint = f" (did you mean {lookup[close[0]]!r}?)" if close else ""
    raise ModelConfigError(f"unknown model {name!r}{hint}; valid names are "
                           f"{', '.join(model_names())}")
