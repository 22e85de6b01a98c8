"""Zero-shot classification with a trained model, CLIP / CLIP_benchmark protocol.

Each class's prompt embedding is the mean of its prompts' normalised embeddings, renormalised
(``align.eval.zeroshot_metrics.build_class_embeddings``); a query gets the class with the highest cosine.
Works for any query modality against any prompt modality the model has.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from accelerate.utils import send_to_device as to_device  # tensors, dicts, BatchEncodings


def raw_encoder(model, modality: str) -> Callable[[list], torch.Tensor]:
    """``f(raw samples) -> unit-norm embeddings [n, D]`` with eval preprocessing, on the model's device.
    A sample that cannot be read raises ``SampleError`` naming its position in the list."""
    from align.modalities.base import SampleError

    if modality not in model.adapters:
        raise KeyError(f"model has no modality '{modality}'; it has {list(model.adapters)}")
    pre = model.adapters[modality].preprocessor()
    device = next(model.parameters()).device

    def one(i: int, raw):
        try:
            return pre(raw, train=False)
        except (SampleError, OSError, ValueError, TypeError) as err:
            raise SampleError(f"{modality} item {i} ({str(raw)[:80]!r}): {err}") from err

    @torch.no_grad()
    def encode(raws: list, start: int = 0) -> torch.Tensor:
        batch = pre.collate([one(start + i, r) for i, r in enumerate(raws)])
        return model.encode(modality, to_device(batch, device)).float().cpu()

    return encode


def build_classifier(model, classnames: Sequence[str], templates: Sequence[str] | dict[str, list[str]],
                     modality: str = "text", batch_size: int = 256) -> torch.Tensor:
    """[C, D] unit-norm class embeddings. ``templates``: shared ``{}`` / ``{c}`` templates, or a
    dict class -> its own prompts (CuPL style)."""
    from align.eval.zeroshot_metrics import build_class_embeddings

    return build_class_embeddings(classnames, templates, raw_encoder(model, modality), batch_size)


def classify(query_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine scores [N, C]; argmax is the predicted class."""
    return query_embeddings @ classifier.T
