"""Layers as GEMMs: a ViT block, MobileNetV1's convolutions (im2col) and LLM projections.

Fidelity: exact shapes (no timing here). A convolution becomes a GEMM by im2col, as SCALE-Sim
maps it (Samajdar et al. 2018, section III): output pixels are the rows, filters the columns,
and one filter's window (kh x kw x C_in) the reduction::

    standard conv:  M = H_out * W_out,  N = C_out,  K = kh * kw * C_in         (one GEMM)
    depthwise conv: M = H_out * W_out,  N = 1,      K = kh * kw     (C_in independent GEMMs)
    pointwise conv: M = H_out * W_out,  N = C_out,  K = C_in                   (1 x 1 kernel)

A depthwise layer is ``C_in`` separate GEMMs of one output column and a reduction of 9: the
shape that leaves a systolic array nearly idle (DRACO's point, see experiments/README.md).

Shapes: ViT-B/16 at 224 x 224 (Dosovitskiy et al. 2021, table 1: 12 heads, hidden 768, MLP
3072; 14 x 14 patches + the class token = 197 tokens); MobileNetV1 1.0-224 (Howard et al. 2017,
table 1); LLaMA-2-7B projections (hidden 4096, MLP 11008, Touvron et al. 2023) at a decode
batch and a prefill length.
"""

from __future__ import annotations

from typing import NamedTuple


class LayerGemm(NamedTuple):
    """``count`` identical GEMMs C[m, n] = A[m, k] @ B[k, n] that make up one layer."""

    group: str            # the layer set ("vit_block", "mobilenet_dw", ...)
    name: str
    m: int
    n: int
    k: int
    count: int = 1

    @property
    def macs(self) -> int:
        return self.count * self.m * self.n * self.k


def vit_block(tokens: int = 197, hidden: int = 768, heads: int = 12,
              mlp: int = 3072) -> list[LayerGemm]:
    head_dim = hidden // heads
    return [LayerGemm("vit_block", "qkv", tokens, 3 * hidden, hidden),
            LayerGemm("vit_block", "scores", tokens, tokens, head_dim, heads),
            LayerGemm("vit_block", "context", tokens, head_dim, tokens, heads),
            LayerGemm("vit_block", "proj", tokens, hidden, hidden),
            LayerGemm("vit_block", "fc1", tokens, mlp, hidden),
            LayerGemm("vit_block", "fc2", tokens, hidden, mlp)]


# MobileNetV1 body (Howard et al. 2017, table 1): (stride of the depthwise conv, output
# channels of the pointwise conv) after the first 3x3 conv of 32 filters at stride 2.
_MOBILENET = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512),
              (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))


def mobilenet_v1(resolution: int = 224) -> list[LayerGemm]:
    """Every convolution of MobileNetV1 1.0 as GEMMs (the final FC layer left out)."""
    side = resolution // 2                         # after conv1, stride 2
    layers = [LayerGemm("mobilenet_conv", "conv1", side * side, 32, 3 * 3 * 3)]
    channels = 32
    for i, (stride, out) in enumerate(_MOBILENET, start=1):
        side = -(-side // stride)
        pixels = side * side
        layers.append(LayerGemm("mobilenet_dw", f"dw{i}", pixels, 1, 9, channels))
        layers.append(LayerGemm("mobilenet_pw", f"pw{i}", pixels, out, channels))
        channels = out
    return layers


def llm_gemms(hidden: int = 4096, mlp: int = 11008, decode_batch: int = 16,
              prefill_tokens: int = 2048) -> list[LayerGemm]:
    """One decoder layer's projections, in decode (``decode_batch`` rows) and prefill."""
    out = []
    for phase, m in (("decode", decode_batch), ("prefill", prefill_tokens)):
        group = f"llm_{phase}"
        out += [LayerGemm(group, "qkv", m, 3 * hidden, hidden),
                LayerGemm(group, "out_proj", m, hidden, hidden),
                LayerGemm(group, "gate_up", m, 2 * mlp, hidden),
                LayerGemm(group, "down", m, hidden, mlp)]
    return out


LAYER_SETS = {"vit_block": vit_block, "mobilenet_v1": mobilenet_v1, "llm_gemms": llm_gemms}
