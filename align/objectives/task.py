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

from align.config.objectives import pair_specs
from align.config.schema import Config
from align.data.mixture import rows_with, select_rows
from align.errors import ConfigError
from align.model.align_model import AlignModel
from align.objectives.factory import build_loss, tiling_mode
from align.objectives.losses import dist_info, gather_rows
from align.objectives.multiway import MatryoshkaLoss
from align.objectives.queue import queue_loss
from align.registry import LOSSES


@dataclass
class Term:
    """One term of the loss: a pair (or, ``multiway``, three or more modalities), its loss, weight."""

    modalities: tuple[str, ...]
    loss_fn: nn.Module
    weight: float = 1.0
    needs_labels: bool = False
    multiway: bool = False

    @property
    def name(self) -> str:
        """'audio-text': how logs name this term's loss (``train/loss/audio-text``)."""
        return "-".join(self.modalities)


@dataclass
class ContrastiveTask:
    model: AlignModel  # the unwrapped model: logit_scale / logit_bias (and per-pair temperatures)
    loss_fn: nn.Module | None
    pairs: list[tuple[str, str]]
    modalities: list[str]
    feature_caches: dict[str, Any] = field(default_factory=dict)  # modality -> FeatureCache (frozen towers)
    micro_batch_size: int | None = None  # GradCache (align.training.gradcache): towers see micro-batches of this size
    terms: list[Term] | None = None  # default: loss_fn on every pair, weight 1
    world_size: int = 1  # data.mix: the losses run on every process's rows, gathered here (gather_rows)
    term_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # the last batch's value per term, for logs

    def __post_init__(self) -> None:
        if self.terms is None:
            self.terms = [Term(tuple(p), self.loss_fn) for p in self.pairs]

    @classmethod
    def from_config(cls, cfg: Config, model: AlignModel, rank: int = 0, world_size: int = 1) -> "ContrastiveTask":
        m = cfg.model  # tiled (no [B, B] logits) from a global batch of loss_tile_above, see tiling_mode
        tiling = tiling_mode(m.loss_tiling, cfg.train.batch_size * world_size, m.loss_tile_above)
        dist = {"rank": rank, "world_size": world_size}
        if cfg.data.mix is not None:  # rows per pair differ by process: gathered by the task, not the loss
            dist = {"rank": 0, "world_size": 1}
        terms = []
        for i, spec in enumerate(pair_specs(cfg)):
            key = (
                f"train.pairs[{i}].loss_options"
                if cfg.train.pairs and cfg.train.pairs[i].loss_options
                else "model.loss_options"
            )
            fn = _build(
                key,
                spec.loss,
                spec.loss_options,
                tiling=tiling,
                tile_size=m.loss_tile_size,
                local_loss=cfg.train.local_loss,
                **dist,
            )
            if m.matryoshka_dims:
                fn = MatryoshkaLoss(fn, m.matryoshka_dims)
            terms.append(Term(spec.modalities, fn, spec.weight, LOSSES.get(spec.loss).needs_labels))
        mw = cfg.train.multiway
        if mw is not None:
            fn = _build("train.multiway.loss_options", mw.loss, mw.loss_options, **dist)
            terms.append(Term(tuple(mw.modalities), fn, mw.weight, multiway=True))
        if not terms:  # checked here, not in the config: `align data` may look at one column
            raise ConfigError(
                "config key 'data.train.columns': nothing to align: give at least two modalities "
                "(a pair, or train.multiway)"
            )
        pairs = [t.modalities for t in terms if not t.multiway]
        return cls(
            model,
            terms[0].loss_fn if terms else None,
            pairs,
            cfg.data.train_modalities(),
            micro_batch_size=cfg.train.micro_batch_size,
            terms=terms,
            world_size=world_size if cfg.data.mix is not None else 1,
        )

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The modality entries of a collated batch (not its index / label / skip counts); a
        modality whose frozen tower is cached gets its rows' features instead (the training loader
        leaves its column out). With ``data.mix`` a modality no row of the batch has is left out."""
        if "present" in batch:
            return {m: batch[m] for m in self.modalities if m in batch}
        return {
            m: batch[m] if m in batch else self.feature_caches[m].lookup(batch["index"], batch["index"].device)
            for m in self.modalities
        }

    def loss(
        self,
        embeddings: dict[str, torch.Tensor],
        labels: torch.Tensor | None = None,
        keys: dict[str, torch.Tensor] | None = None,
        present: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Weighted mean of the terms (the plain mean when the weights are equal, as before weights
        existed, so results are unchanged). ``labels``: the rows' classes, for label-based losses.
        ``present`` (``data.mix``): which rows have which modality; see ``masked_loss``."""
        if present is not None:
            return self.masked_loss(embeddings, present, labels, keys)
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
                values.append(
                    queue_loss(
                        embeddings[a],
                        embeddings[b],
                        keys[a],
                        keys[b],
                        mom.queue(a),
                        mom.queue(b),
                        model.pair_scale(a, b),
                        mom.distill,
                    )
                )
                continue
            kw = {"labels": labels} if t.needs_labels else {}
            values.append(t.loss_fn(embeddings[a], embeddings[b], model.pair_scale(a, b), bias, **kw))
        weights = [t.weight for t in self.terms]
        self.term_losses = {t.name: v.detach() for t, v in zip(self.terms, values)}
        # with a temperature per pair the shared one may be in no term; DDP needs its (zero) gradient
        unused = model.logit_scale.sum() * 0.0 if model.pair_logit_scales is not None else 0.0
        if len(set(weights)) <= 1:
            return torch.stack(values).mean() + unused
        return sum(w * v for w, v in zip(weights, values)) / sum(weights) + unused

    def masked_loss(
        self,
        embeddings: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        labels: torch.Tensor | None = None,
        keys: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Each term on the rows that have all its modalities (selected, never zero-padded). Under
        data parallelism those rows are gathered from every process with gradients (their number
        differs by process) and each process computes the loss over the global rows; the gather's
        backward sums the processes' gradients and DDP averages them, so the update equals one
        process holding the whole batch. A term with fewer than two rows in the global batch has
        nothing to contrast and is left out of this step's mean (the same on every process).
        With ``model.momentum`` (``keys``) each process scores its own rows of the pair against the
        momentum keys and the shared queues, as the unmasked path does: nothing is gathered, and a
        pair is left out where this process has none of its rows."""
        model = self.model
        bias = None if model.logit_bias is None else model.logit_bias.reshape(())
        like = next(iter(embeddings.values()))
        dim = model.cfg.embed_dim
        values, weights, idle, names = [], [], [], []
        for t in self.terms:
            keep = rows_with(present, t.modalities)
            if keys is not None:  # model.momentum: ALBEF's loss against the momentum keys and queues
                a, b = t.modalities
                q = [select_rows(x.get(m), present.get(m), keep, dim, like) for x in (embeddings, keys) for m in (a, b)]
                if len(q[0]):
                    mom = model.momentum
                    values.append(queue_loss(*q, mom.queue(a), mom.queue(b), model.pair_scale(a, b), mom.distill))
                    weights.append(t.weight)
                    names.append(t.name)
                else:
                    idle.append(model.pair_scale(a, b))
                continue
            feats = [
                gather_rows(select_rows(embeddings.get(m), present.get(m), keep, dim, like), self.world_size)
                for m in t.modalities
            ]
            scale = model.logit_scale.exp().reshape(()) if t.multiway else model.pair_scale(*t.modalities)
            if feats[0].shape[0] < 2:
                idle += [scale] + ([] if bias is None or t.multiway else [bias])
                continue
            if t.multiway:
                values.append(t.loss_fn(feats, scale))
            else:
                kw = {"labels": gather_rows(labels[keep], self.world_size)} if t.needs_labels else {}
                values.append(t.loss_fn(feats[0], feats[1], scale, bias, **kw))
            weights.append(t.weight)
            names.append(t.name)
        # DDP expects a gradient for every parameter on every process: towers with no row here,
        # towers whose rows no term used and temperatures of terms left out get an exact zero
        # (find_unused_parameters cannot be used: the temperatures live outside the wrapped
        # forward, so it would mark them ready twice)
        idle += [e.sum() for e in embeddings.values()] + [model.logit_scale.sum()]
        idle += [
            p.sum()
            for m in self.modalities
            if m not in embeddings
            for p in self.model.tower_parameters(m)
            if p.requires_grad
        ]
        zero = torch.stack(idle).sum() * 0.0
        self.term_losses = {n: v.detach() for n, v in zip(names, values)}  # the terms this batch had rows for
        if not values:
            return zero
        return sum(w * v for w, v in zip(weights, values)) / sum(weights) + zero

    def __call__(
        self, forward: Callable[[dict[str, Any]], dict[str, torch.Tensor]], batch: dict[str, Any]
    ) -> torch.Tensor:
        """Encode the batch with ``forward`` (the possibly DDP-wrapped model) and return the loss."""
        inputs = self.inputs(batch)
        embeddings = forward(inputs)
        mom = self.model.momentum
        if mom is None:
            return self.loss(embeddings, batch.get("label"), present=batch.get("present"))
        keys = mom.encode(inputs)
        if self.model.training:
            self.pending_keys = keys  # enqueued after the optimizer step (after_step)
        return self.loss(embeddings, batch.get("label"), keys, present=batch.get("present"))

    def after_step(self) -> None:
        """After each optimizer step: clamp the temperatures; with ``model.momentum`` move the EMA
        towers and enqueue this step's momentum embeddings."""
        self.model.clamp_logit_scale_()
        mom = self.model.momentum
        if mom is not None and getattr(self, "pending_keys", None) is not None:
            mom.update(self.model.adapters, self.model.heads)
            mom.enqueue(gather_keys(self.pending_keys, list(mom.adapters)))
            self.pending_keys = None


def gather_keys(keys: dict[str, torch.Tensor], modalities: list[str]) -> dict[str, torch.Tensor]:
    """Every process's momentum embeddings per modality, in rank order, for the shared queues.
    Every modality takes part on every process, with zero rows when its batch had none
    (``data.mix``): the gather is a collective, issued in the same order everywhere."""
    _, world = dist_info()
    like = next(iter(keys.values()))
    with torch.no_grad():
        return {m: gather_rows(keys.get(m, like[:0]).contiguous(), world) for m in modalities}


def _build(key: str, name: str, options: dict[str, Any] | None, **kwargs) -> nn.Module:
    """``build_loss`` with the loss's own options; a wrong option is a ConfigError naming ``key``."""
    try:
        return build_loss(name, **kwargs, **(options or {}))
    except TypeError as err:
        raise ConfigError(f"config key '{key}': {err}") from None
