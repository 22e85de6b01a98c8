"""``ContrastiveTask``: the one place a batch's loss over modality pairs is computed.

It holds what the loss needs besides the batch: the model whose temperature (and SigLIP bias)
scales the scores, the pairwise loss (with its cross-process gather), the modality pairs it
aligns and the modalities a batch feeds. The training step and the validation loss take a task
instead of these as separate arguments, so a new objective changes the task, not the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from align.config import Config
from align.losses import build_loss
from align.model import AlignModel, contrastive_loss


@dataclass
class ContrastiveTask:
    model: AlignModel  # the unwrapped model: logit_scale / logit_bias
    loss_fn: nn.Module
    pairs: list[tuple[str, str]]
    modalities: list[str]

    @classmethod
    def from_config(cls, cfg: Config, model: AlignModel, rank: int = 0, world_size: int = 1) -> "ContrastiveTask":
        loss_fn = build_loss(cfg.model.loss, local_loss=cfg.train.local_loss, rank=rank, world_size=world_size)
        return cls(model, loss_fn, cfg.loss_pairs(), list(cfg.data.train.columns))

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The modality entries of a collated batch (not its index / label / skip counts)."""
        return {m: batch[m] for m in self.modalities}

    def loss(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the pairwise loss over the task's pairs."""
        return contrastive_loss(self.model, embeddings, self.pairs, self.loss_fn)

    def __call__(self, forward: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
                 batch: dict[str, Any]) -> torch.Tensor:
        """Encode the batch with ``forward`` (the possibly DDP-wrapped model) and return the loss."""
        return self.loss(forward(self.inputs(batch)))
