"""Zero-shot classification with a trained model, CLIP / CLIP_benchmark protocol.

Each class's prompt embedding is the mean of its prompts' normalised embeddings, renormalised
(``align.eval.zeroshot_metrics.build_class_embeddings``); a query gets the class with the highest cosine.
Works for any query modality against any prompt modality the model has.
"""

from __future__ import annotations

from typing import Sequence

import torch

from align.eval.zeroshot_metrics import build_class_embeddings
from align.model.align_model import raw_encoder


def build_classifier(
    model,
    classnames: Sequence[str],
    templates: Sequence[str] | dict[str, list[str]],
    modality: str = "text",
    batch_size: int = 256,
) -> torch.Tensor:
    """[C, D] unit-norm class embeddings. ``templates``: shared ``{}`` / ``{c}`` templates, or a
    dict class -> its own prompts (CuPL style)."""
    return build_class_embeddings(classnames, templates, raw_encoder(model, modality), batch_size)


def classify(query_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine scores [N, C]; argmax is the predicted class."""
    return query_embeddings @ classifier.T
