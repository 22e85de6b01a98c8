"""``encode(model, modality, items)``: embeddings of raw items, with the model's eval preprocessing
(``align.encode`` in the public façade points here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from align.model.align_model import raw_encoder

if TYPE_CHECKING:
    import torch


def encode(model: Any, modality: str, items: Sequence[Any], batch_size: int = 256) -> "torch.Tensor":
    """Unit-norm embeddings ``[len(items), embed_dim]`` of raw items of one modality, with the
    model's evaluation preprocessing: file paths, strings, arrays, PIL images, SMILES, ... whatever
    that modality's preprocessor reads. (``model.encode(modality, batch)`` takes an already
    preprocessed and collated batch; this is the one to call on raw data.)

    >>> model, cfg = align.load_model("runs/demo")
    >>> align.encode(model, "text", ["a handwritten seven."]).shape
    torch.Size([1, 64])
    """
    import torch

    items = list(items)
    run = raw_encoder(model, modality)
    outs = [run(items[i : i + batch_size], i) for i in range(0, len(items), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, model.cfg.embed_dim)
