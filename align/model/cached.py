"""``CachedFeatures``: a frozen tower's features standing in for its inputs in a batch."""

from __future__ import annotations

import torch


class CachedFeatures:
    """A batch entry that carries a frozen tower's features [B, feature_dim] instead of its inputs
    (``align.training.feature_cache``): the model applies only the head."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)
