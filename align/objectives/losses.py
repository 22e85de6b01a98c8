"""Contrastive losses (open_clip ``loss.py`` style): one small class per loss, gather beside them.

Both losses take ``logit_scale`` already exponentiated, as open_clip's do, so values match
``open_clip.ClipLoss`` / ``open_clip.SigLipLoss`` exactly. Under data parallelism the other
processes' features are gathered *with gradients* (``torch.distributed.nn.all_gather``), so each
process sees the whole global batch as negatives and the averaged gradients equal those of one
process holding the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from align.registry import Registry

LOSSES: Registry = Registry("loss")


def gather_features(features: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every process's features in rank order, keeping the autograd graph."""
    if world_size <= 1:
        return features
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(features), dim=0)


def gather_rows(features: torch.Tensor, world_size: int) -> torch.Tensor:
    """``gather_features`` for a different number of rows per process (``data.mix``: the rows of a
    batch that have both modalities of a pair): sizes are exchanged, each process pads to the
    largest, and the padding is dropped after the gather, so no padded row reaches a loss. Every
    process must call it, with zero rows too (it is a collective).

    It talks on a process group of its own: with rows that differ by process the towers' graphs
    differ, so DDP's gradient all-reduces (issued on the default group as buckets fill) and the
    gather's backward would interleave in a different order on each process and mismatch (gloo:
    "Received data size doesn't match expected size")."""
    if world_size <= 1:
        return features
    import torch.distributed as dist
    import torch.distributed.nn

    group = _rows_group()
    n = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - features.shape[0]
    if pad:
        features = torch.cat([features, features.new_zeros((pad, *features.shape[1:]))])
    parts = torch.distributed.nn.all_gather(features, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)


_ROWS_GROUP: dict[int, object] = {}


def _rows_group():
    """``gather_rows``' own group over every process, made once (every process calls it first at
    the same point: the first gather of the first step)."""
    import torch.distributed as dist

    key = id(dist.group.WORLD)  # a new default group (a new run in this process) gets a new one
    if key not in _ROWS_GROUP:
        _ROWS_GROUP[key] = dist.new_group()
    return _ROWS_GROUP[key]


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@LOSSES.register("clip")
class ClipLoss(nn.Module):
    """Symmetric InfoNCE. With ``local_loss`` each process scores its own rows against the global
    batch (same gradients, 1/world_size of the logits memory)."""

    def __init__(self, local_loss: bool = True, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.local_loss = local_loss
        self._rank, self._world = rank, world_size

    def dist(self) -> tuple[int, int]:
        if self._world is not None:
            return self._rank or 0, self._world
        return _dist_info()

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        rank, world = self.dist()
        n = a.shape[0]
        if world > 1:
            all_a, all_b = gather_features(a, world), gather_features(b, world)
            if self.local_loss:
                logits_a = logit_scale * a @ all_b.T
                logits_b = logit_scale * b @ all_a.T
                labels = torch.arange(n, device=a.device) + n * rank
            else:
                logits_a = logit_scale * all_a @ all_b.T
                logits_b = logits_a.T
                labels = torch.arange(all_a.shape[0], device=a.device)
        else:
            logits_a = logit_scale * a @ b.T
            logits_b = logits_a.T
            labels = torch.arange(n, device=a.device)
        if logit_bias is not None:
            logits_a, logits_b = logits_a + logit_bias, logits_b + logit_bias
        return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2


@LOSSES.register("siglip")
class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP): every (a_i, b_j) is a binary match / non-match.

    The sum runs over this process's rows of ``a`` against every ``b`` in the global batch and is
    divided by the local batch size, as open_clip does; averaging over processes then gives the
    single-process value for the global batch. (open_clip exchanges ``b`` between neighbours in a
    ring to save memory; gathering gives the same sums.)
    """

    def __init__(self, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self._rank, self._world = rank, world_size

    dist = ClipLoss.dist

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        rank, world = self.dist()
        n = a.shape[0]
        all_b = gather_features(b, world)
        logits = logit_scale * a @ all_b.T
        if logit_bias is not None:
            logits = logits + logit_bias
        labels = -torch.ones_like(logits)
        idx = torch.arange(n, device=a.device)
        labels[idx, idx + n * rank] = 1.0
        return -F.logsigmoid(labels * logits).sum() / n
