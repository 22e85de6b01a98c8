"""``ContrastiveTask``: the one place a batch's loss over modality pairs is computed.

It holds what the loss needs besides the batch: the model whose temperature (and SigLIP bias)
scales the scores, the pairwise loss (with its cross-process gather), the modality pairs it
aligns and the modalities a batch feeds. The training step and the validation loss take a task
instead of these as separate arguments, so a new objective changes the task, not the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from align.config import Config
from align.losses import build_loss, tiling_mode
from align.model import AlignModel, contrastive_loss


@dataclass
class ContrastiveTask:
    model: AlignModel  # the unwrapped model: logit_scale / logit_bias
    loss_fn: nn.Module
    pairs: list[tuple[str, str]]
    modalities: list[str]
    feature_caches: dict[str, Any] = field(default_factory=dict)  # modality -> FeatureCache (frozen towers)
    micro_batch_size: int | None = None  # GradCache (align.gradcache): towers see micro-batches of this size

    @classmethod
    def from_config(cls, cfg: Config, model: AlignModel, rank: int = 0, world_size: int = 1) -> "ContrastiveTask":
        m = cfg.model  # tiled (no [B, B] logits) from a global batch of loss_tile_above, see tiling_mode
        tiling = tiling_mode(m.loss_tiling, cfg.train.batch_size * world_size, m.loss_tile_above)
        loss_fn = build_loss(m.loss, tiling=tiling, tile_size=m.loss_tile_size, local_loss=cfg.train.local_loss,
                             rank=rank, world_size=world_size)
        return cls(model, loss_fn, cfg.loss_pairs(), list(cfg.data.train.columns),
                   micro_batch_size=cfg.train.micro_batch_size)

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The modality entries of a collated batch (not its index / label / skip counts); a
        modality whose frozen tower is cached gets its rows' features instead (the training loader
        leaves its column out)."""
        return {m: batch[m] if m in batch else self.feature_caches[m].lookup(batch["index"], batch["index"].device)
                for m in self.modalities}

    def loss(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the pairwise loss over the task's pairs."""
        return contrastive_loss(self.model, embeddings, self.pairs, self.loss_fn)

    def __call__(self, forward: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
                 batch: dict[str, Any]) -> torch.Tensor:
        """Encode the batch with ``forward`` (the possibly DDP-wrapped model) and return the loss."""
        return self.loss(forward(self.inputs(batch)))
