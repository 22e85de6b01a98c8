"""Contrastive losses (open_clip ``loss.py`` style): one small class per loss, gather beside them.

Both losses take ``logit_scale`` already exponentiated, as open_clip's do, so values match
``open_clip.ClipLoss`` / ``open_clip.SigLipLoss`` exactly. Under data parallelism the other
processes' features are gathered *with gradients* (``torch.distributed.nn.all_gather``), so each
process sees the whole global batch as negatives and the averaged gradients equal those of one
process holding the global batch.

``Loss`` is what every loss shares: its process rank / world size (``dist``) and, as class
attributes, what the rest of align asks a loss by name (``align.registry.LOSSES``): whether it needs
labels, whether it scores a pair or three or more modalities at once, the temperature (and bias)
a model using it starts from and how its logits become probabilities (``AlignModel.score``).
A loss from another package subclasses it and registers under the ``align.losses`` entry points.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from align.registry import LOSSES


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


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the given ones when ``world_size`` is set, else the default process
    group's, else (0, 1) (one process, or torch.distributed not started)."""
    if world_size is not None:
        return rank or 0, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Loss(nn.Module):
    """Base of every loss: the process rank / world size it was built for (``None``: asked of
    torch.distributed at each call) and what align asks the class by name."""

    needs_labels: ClassVar[bool] = False  # forward takes labels=: rows sharing a label are positives
    multiway: ClassVar[bool] = False  # forward(embeddings, logit_scale) over >= 3 modalities (train.multiway)
    init_logit_scale: ClassVar[float] = math.log(1 / 0.07)  # ln(1 / temperature) a model starts from (CLIP)
    init_logit_bias: ClassVar[float | None] = None  # a learnable bias on the logits, its start (SigLIP)
    probability: ClassVar[Literal["softmax", "sigmoid"]] = "softmax"  # logits -> probabilities (AlignModel.score)

    def __init__(self, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self._rank, self._world = rank, world_size

    def dist(self) -> tuple[int, int]:
        return dist_info(self._rank, self._world)


@LOSSES.register("clip")
class ClipLoss(Loss):
    """Symmetric InfoNCE. With ``local_loss`` each process scores its own rows against the global
    batch (same gradients, 1/world_size of the logits memory)."""

    def __init__(self, local_loss: bool = True, rank: int | None = None, world_size: int | None = None):
        super().__init__(rank, world_size)
        self.local_loss = local_loss

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
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
class SigLipLoss(Loss):
    """Pairwise sigmoid loss (SigLIP): every (a_i, b_j) is a binary match / non-match.

    The sum runs over this process's rows of ``a`` against every ``b`` in the global batch and is
    divided by the local batch size, as open_clip does; averaging over processes then gives the
    single-process value for the global batch. (open_clip exchanges ``b`` between neighbours in a
    ring to save memory; gathering gives the same sums.)
    """

    init_logit_scale = math.log(10.0)
    init_logit_bias = -10.0
    probability = "sigmoid"  # an independent match probability per pair

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
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
