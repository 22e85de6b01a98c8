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

import align.objectives  # noqa: F401  (registers multi_positive, dcl, hcl, mochi)
import align.objectives_multi  # noqa: F401  (registers symile, gram)
from align.config import Config, ConfigError
from align.losses import build_loss, tiling_mode
from align.model import AlignModel
from align.momentum import queue_loss
from align.objective_spec import NEEDS_LABELS, pair_specs


@dataclass
class Term:
    """One term of the loss: a pair (or, ``multiway``, three or more modalities), its loss, weight."""

    modalities: tuple[str, ...]
    loss_fn: nn.Module
    weight: float = 1.0
    needs_labels: bool = False
    multiway: bool = False


@dataclass
class ContrastiveTask:
    model: AlignModel  # the unwrapped model: logit_scale / logit_bias (and per-pair temperatures)
    loss_fn: nn.Module | None
    pairs: list[tuple[str, str]]
    modalities: list[str]
    feature_caches: dict[str, Any] = field(default_factory=dict)  # modality -> FeatureCache (frozen towers)
    micro_batch_size: int | None = None  # GradCache (align.gradcache): towers see micro-batches of this size
    terms: list[Term] | None = None  # default: loss_fn on every pair, weight 1

    def __post_init__(self) -> None:
        if self.terms is None:
            self.terms = [Term(tuple(p), self.loss_fn) for p in self.pairs]

    @classmethod
    def from_config(cls, cfg: Config, model: AlignModel, rank: int = 0, world_size: int = 1) -> "ContrastiveTask":
        m = cfg.model  # tiled (no [B, B] logits) from a global batch of loss_tile_above, see tiling_mode
        tiling = tiling_mode(m.loss_tiling, cfg.train.batch_size * world_size, m.loss_tile_above)
        dist = {"rank": rank, "world_size": world_size}
        terms = []
        for i, spec in enumerate(pair_specs(cfg)):
            key = f"train.pairs[{i}].loss_options" if cfg.train.pairs and cfg.train.pairs[i].loss_options \
                else "model.loss_options"
            fn = _build(key, spec.loss, spec.loss_options, tiling=tiling, tile_size=m.loss_tile_size,
                        local_loss=cfg.train.local_loss, **dist)
            if m.matryoshka_dims:
                fn = align.objectives_multi.MatryoshkaLoss(fn, m.matryoshka_dims)
            terms.append(Term(spec.modalities, fn, spec.weight, spec.loss in NEEDS_LABELS))
        mw = cfg.train.multiway
        if mw is not None:
            fn = _build("train.multiway.loss_options", mw.loss, mw.loss_options, **dist)
            terms.append(Term(tuple(mw.modalities), fn, mw.weight, multiway=True))
        if not terms:  # checked here, not in the config: `align data` may look at one column
            raise ConfigError("config key 'data.train.columns': nothing to align: give at least two modalities "
                              "(a pair, or train.multiway)")
        pairs = [t.modalities for t in terms if not t.multiway]
        return cls(model, terms[0].loss_fn if terms else None, pairs, list(cfg.data.train.columns),
                   micro_batch_size=cfg.train.micro_batch_size, terms=terms)

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The modality entries of a collated batch (not its index / label / skip counts); a
        modality whose frozen tower is cached gets its rows' features instead (the training loader
        leaves its column out)."""
        return {m: batch[m] if m in batch else self.feature_caches[m].lookup(batch["index"], batch["index"].device)
                for m in self.modalities}

    def loss(self, embeddings: dict[str, torch.Tensor], labels: torch.Tensor | None = None,
             keys: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Weighted mean of the terms (the plain mean when the weights are equal, as before weights
        existed, so results are unchanged). ``labels``: the rows' classes, for label-based losses."""
        model = self.model
        bias = None if model.logit_bias is None else model.logit_bias.reshape(())
        values = []
        for t in self.terms:
            if t.multiway:
                values.append(t.loss_fn([embeddings[m] for m in t.modalities], model.logit_scale.exp().reshape(())))
                continue
            a, b = t.modalities
            if keys is not None:  # model.momentum: ALBEF's loss against momentum keys and queues
                mom = model.momentum
                values.append(queue_loss(embeddings[a], embeddings[b], keys[a], keys[b], mom.queue(a), mom.queue(b),
                                         model.pair_scale(a, b), mom.distill))
                continue
            kw = {"labels": labels} if t.needs_labels else {}
            values.append(t.loss_fn(embeddings[a], embeddings[b], model.pair_scale(a, b), bias, **kw))
        weights = [t.weight for t in self.terms]
        if len(set(weights)) <= 1:
            return torch.stack(values).mean()
        return sum(w * v for w, v in zip(weights, values)) / sum(weights)

    def __call__(self, forward: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
                 batch: dict[str, Any]) -> torch.Tensor:
        """Encode the batch with ``forward`` (the possibly DDP-wrapped model) and return the loss."""
        inputs = self.inputs(batch)
        embeddings = forward(inputs)
        mom = self.model.momentum
        if mom is None:
            return self.loss(embeddings, batch.get("label"))
        keys = mom.encode(inputs)
        if self.model.training:
            self.pending_keys = keys  # enqueued after the optimizer step (after_step)
        return self.loss(embeddings, batch.get("label"), keys)

    def after_step(self) -> None:
        """After each optimizer step: clamp the temperatures; with ``model.momentum`` move the EMA
        towers and enqueue this step's momentum embeddings."""
        self.model.clamp_logit_scale_()
        mom = self.model.momentum
        if mom is not None and getattr(self, "pending_keys", None) is not None:
            mom.update(self.model.adapters, self.model.heads)
            mom.enqueue(self.pending_keys)
            self.pending_keys = None


def _build(key: str, name: str, options: dict[str, Any] | None, **kwargs) -> nn.Module:
    """``build_loss`` with the loss's own options; a wrong option is a ConfigError naming ``key``."""
    try:
        return build_loss(name, **kwargs, **(options or {}))
    except TypeError as err:
        raise ConfigError(f"config key '{key}': {err}") from None
