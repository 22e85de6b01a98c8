"""Zero-shot classification, CLIP / CLIP_benchmark protocol.

Each class's prompt embedding is the mean of its templates' normalised embeddings, renormalised;
a query is assigned the class whose prompt embedding has the highest cosine similarity.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def build_classifier(model, classnames: Sequence[str], templates: Sequence[str] | dict[str, list[str]],
                     modality: str = "text", batch_size: int = 256) -> torch.Tensor:
    """[C, D] unit-norm class embeddings. ``templates`` is a list of ``{}`` templates shared by all
    classes, or a dict class -> its own prompts (CuPL style)."""
    if len(set(classnames)) != len(classnames):
        dupes = sorted({c for c in classnames if list(classnames).count(c) > 1})
        raise ValueError(f"class names must be unique; duplicated: {dupes}")
    pre = model.adapters[modality].preprocessor()
    device = next(model.parameters()).device
    weights = []
    for name in classnames:
        prompts = templates[name] if isinstance(templates, dict) else [t.format(name) for t in templates]
        embs = []
        for i in range(0, len(prompts), batch_size):
            batch = pre.collate([pre(p, train=False) for p in prompts[i:i + batch_size]])
            embs.append(model.encode(modality, to_device(batch, device)))
        emb = torch.cat(embs).mean(0)
        weights.append(F.normalize(emb, dim=-1))
    return torch.stack(weights)


def to_device(batch: Any, device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def classify(query_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine scores [N, C]; argmax is the predicted class."""
    return query_embeddings @ classifier.T
