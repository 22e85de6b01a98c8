"""Building blocks several modalities share (timm's ``layers/``): one definition each, so two
towers that mean the same block build the same block."""
from __future__ import annotations

import torch
from torch import nn


def prenorm_transformer(width: int, heads: int, mlp_ratio: float, dropout: float, layers: int) -> nn.TransformerEncoder:
    """The ViT-style trunk of the from-scratch towers (AST, the point-patch transformer, video's
    temporal model): pre-norm blocks, GELU MLP of ``mlp_ratio * width``, batch-first
    [B, tokens, width]."""
    layer = nn.TransformerEncoderLayer(width, heads, round(width * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, D] over the positions where ``mask`` [B, T] is set (padding left
    out); a row with no set position gives zeros rather than NaN."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def norm_layer(kind: str, width: int) -> nn.Module:
    """``batch`` | ``layer`` | ``none`` -> BatchNorm1d / LayerNorm / Identity over ``width`` features."""
    return {"batch": lambda: nn.BatchNorm1d(width), "layer": lambda: nn.LayerNorm(width),
            "none": nn.Identity}[kind]()


def freeze_(module: nn.Module) -> None:
    """Stop training ``module``'s parameters (a frozen pretrained tower)."""
    for p in module.parameters():
        p.requires_grad_(False)
