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


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, m: int, start: int | torch.Tensor = 0) -> torch.Tensor:
    """Indices of ``m`` <= N points per cloud chosen greedily, each the farthest from those already
    chosen, the first being ``start`` (an index, or one per cloud); prefixes of the result are
    themselves farthest-point samples. ``xyz`` [N, 3] -> [m], or a batch [B, N, 3] -> [B, m].

    The one implementation: the point-cloud workers sample each raw cloud with it (on float64
    points) and the patch encoder picks its group centres with it on whole batches (on device).
    Coordinates are kept as [B, 3, N] so each step reads contiguous rows: measured on one cloud
    (1,024 of 2,000 points) in a worker, 13 ms against 7.6 ms for the numpy loop it replaced and
    45 ms for the previous torch version; identical indices."""
    single = xyz.dim() == 2
    pts = (xyz[None] if single else xyz).transpose(1, 2).contiguous()  # [B, 3, N]
    b, _, n = pts.shape
    idx = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), dtype=pts.dtype, device=xyz.device)
    far = torch.as_tensor(start, dtype=torch.long, device=xyz.device).expand(b).clone()
    for i in range(m):
        idx[:, i] = far
        centre = torch.gather(pts, 2, far.view(b, 1, 1).expand(b, 3, 1))  # [B, 3, 1]
        torch.minimum(dist, (pts - centre).square_().sum(1), out=dist)
        far = dist.argmax(-1)
    return idx[0] if single else idx
