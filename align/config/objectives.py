"""What a run's loss is made of, as config data: which modality pairs, with which objective and
weight, an optional anchor (ImageBind: every modality paired only with the anchor), and an
optional term over three or more modalities at once (Symile, GRAM).

Losses are named here and looked up in ``align.registry.LOSSES`` (align's own in
``align.objectives.losses`` / ``.variants`` / ``.multiway``, declared under the ``align.losses``
entry points; another package declares its own there): whether a loss scores a pair or three or
more modalities at once (``multiway``) and whether it needs labels (``needs_labels``) are
attributes of its class, so validation asks the class (importing its module) instead of keeping
lists of names.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from align.config.dataset import Strict
from align.registry import LOSSES


class PairSpec(Strict):
    """One aligned pair; ``loss`` / ``loss_options`` default to ``model.loss`` / ``model.loss_options``."""

    modalities: tuple[str, str]
    loss: str | None = None  # a pairwise loss in align.registry.LOSSES (checked by check_objectives)
    loss_options: dict[str, Any] | None = None
    weight: float = Field(1.0, gt=0, description="this pair's share of the weighted mean over terms")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        """``[a, b]`` (the short form) is ``{modalities: [a, b]}``."""
        if isinstance(value, (list, tuple)):
            return {"modalities": tuple(value)}
        return value


class MomentumSpec(Strict):
    """MoCo / ALBEF: EMA towers and queues of their embeddings as extra negatives (align.model.momentum)."""

    queue_size: int = Field(4096, gt=0, description="past momentum embeddings kept per modality")
    momentum: float = Field(0.995, ge=0, lt=1, description="EMA factor m of theta' <- m theta' + (1 - m) theta")
    distill: float = Field(0.0, ge=0, le=1, description="ALBEF momentum distillation weight alpha (0 = off)")


class MultiwaySpec(Strict):
    """One term over three or more modalities of the same rows (beyond pairs)."""

    loss: str  # a multiway loss in align.registry.LOSSES (checked by check_objectives)
    modalities: list[str] = Field(min_length=2, description="the modalities of each tuple (>= 3)")
    loss_options: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _three(self) -> "MultiwaySpec":
        if len(self.modalities) < 3:
            raise ValueError(
                f"{self.loss} aligns three or more modalities at once, got {self.modalities}; "
                "for two use a pairwise loss (train.pairs)"
            )
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities repeat: {self.modalities}")
        return self


# what align asks a loss class (align.objectives.losses.Loss has each)
ASKED = ("needs_labels", "multiway", "init_logit_scale", "init_logit_bias", "probability")


def loss_class(name: str, key: str, multiway: bool = False) -> type:
    """The class registered as loss ``name``; an unknown name, or a pairwise loss where a multiway
    one belongs (or the other way round), is a ValueError naming ``key`` and the losses that fit."""
    kind = "multiway" if multiway else "pairwise"
    if name not in LOSSES.names():
        raise ValueError(f"config key '{key}': unknown loss '{name}'; {kind} losses: {', '.join(loss_names(multiway))}")
    cls = LOSSES.get(name)
    missing = [a for a in ASKED if not hasattr(cls, a)]
    if missing:
        raise ValueError(
            f"config key '{key}': loss '{name}' ({cls!r}) has no {', '.join(missing)}: a loss "
            "subclasses align.objectives.losses.Loss"
        )
    if cls.multiway != multiway:
        where = (
            "a pair (model.loss, train.pairs[].loss)"
            if not cls.multiway
            else "three or more modalities at once (train.multiway.loss)"
        )
        raise ValueError(
            f"config key '{key}': loss '{name}' scores {where}, not a {kind} term; "
            f"{kind} losses: {', '.join(loss_names(multiway))}"
        )
    return cls


def loss_names(multiway: bool = False) -> list[str]:
    """The registered losses of one kind (imports their modules: only to word an error)."""
    return [n for n in LOSSES.names() if bool(getattr(LOSSES.get(n), "multiway", False)) == multiway]


def pair_specs(cfg) -> list[PairSpec]:
    """The run's pairwise terms, each with its loss resolved: ``train.pairs``; with ``train.anchor``
    every other training modality paired with the anchor; by default every pair of training
    modalities (none when ``train.multiway`` is the only objective asked for with ``pairs: []``).
    With ``data.mix``, anchor and default pairs are only those that appear together in some set."""
    tc, mods = cfg.train, cfg.data.train_modalities()
    together = co_occurring(cfg)
    if tc.anchor is not None:
        specs = [
            PairSpec(modalities=(m, tc.anchor))
            for m in mods
            if m != tc.anchor and frozenset((m, tc.anchor)) in together
        ]
    elif tc.pairs is not None:
        specs = [p.model_copy() for p in tc.pairs]
    else:
        specs = [
            PairSpec(modalities=(a, b))
            for i, a in enumerate(mods)
            for b in mods[i + 1 :]
            if frozenset((a, b)) in together
        ]
    for p in specs:
        p.loss = p.loss or cfg.model.loss
        p.loss_options = cfg.model.loss_options if p.loss_options is None else p.loss_options
    return specs


def co_occurring(cfg) -> set[frozenset[str]]:
    """The modality pairs some training set has in one row (every pair for a single data.train)."""
    return {
        frozenset((a, b)) for _, spec, _ in cfg.data.train_parts() for a in spec.columns for b in spec.columns if a != b
    }


def parts_with(cfg, mods) -> list[tuple[str, object]]:
    """(key, spec) of the training sets that have every one of ``mods``."""
    return [(k, s) for k, s, _ in cfg.data.train_parts() if set(mods) <= set(s.columns)]


def check_objectives(cfg) -> None:
    """Cross-section checks, each naming its key: anchor / pairs / multiway modalities exist and
    have columns, label-based losses have labels, something is left to align."""
    known, cols = set(cfg.model.modalities), set(cfg.data.train_modalities())
    tc = cfg.train
    where = "data.train.columns" if cfg.data.mix is None else "any data.mix[].data.columns"
    loss_class(cfg.model.loss, "model.loss")
    for i, pair in enumerate(tc.pairs or []):
        if pair.loss is not None:
            loss_class(pair.loss, f"train.pairs[{i}].loss")
    if tc.multiway is not None:
        loss_class(tc.multiway.loss, "train.multiway.loss", multiway=True)

    def exists(key: str, mod: str) -> None:
        if mod not in known:
            raise ValueError(f"config key '{key}': modality '{mod}' is not in model.modalities {sorted(known)}")
        if mod not in cols:
            raise ValueError(
                f"config key '{key}': modality '{mod}' has no column in {where} "
                f"{sorted(cols)}, so it never appears with the others in a row"
            )

    def together(key: str, mods) -> None:
        if not parts_with(cfg, mods):
            raise ValueError(
                f"config key '{key}': {' and '.join(mods)} never appear together in one "
                f"training set's rows (data.mix), so there is nothing to align them on"
            )

    if tc.anchor is not None:
        if tc.pairs is not None:
            raise ValueError("config key 'train.anchor': give train.anchor or train.pairs, not both")
        exists("train.anchor", tc.anchor)
        for mod in cfg.data.train_modalities():
            if mod != tc.anchor:
                together("train.anchor", (mod, tc.anchor))
    for i, pair in enumerate(tc.pairs or []):
        for mod in pair.modalities:
            exists(f"train.pairs[{i}]", mod)
        if pair.modalities[0] == pair.modalities[1]:
            raise ValueError(f"config key 'train.pairs[{i}]': a modality paired with itself")
        together(f"train.pairs[{i}]", pair.modalities)
    if tc.multiway is not None:
        for mod in tc.multiway.modalities:
            exists("train.multiway.modalities", mod)
        together("train.multiway.modalities", tc.multiway.modalities)
    specs = pair_specs(cfg)
    if cfg.model.momentum is not None:
        other = sorted({p.loss for p in specs} - {"clip"})
        if other or tc.micro_batch_size:
            raise ValueError(
                "config key 'model.momentum': the momentum queue is ALBEF's CLIP-style loss; it "
                f"cannot be combined with {other or 'train.micro_batch_size (GradCache)'}"
            )
    for i, p in enumerate(specs):
        unlabelled = [k for k, s in parts_with(cfg, p.modalities) if s.label_column is None]
        if LOSSES.get(p.loss).needs_labels and unlabelled:
            key = f"train.pairs[{i}].loss" if tc.pairs and tc.pairs[i].loss else "model.loss"
            raise ValueError(
                f"config key '{key}': loss '{p.loss}' treats rows that share a label as "
                f"positives and needs {unlabelled[0]}.label_column"
            )


def needs_labels(cfg) -> bool:
    """Whether a pairwise term's loss treats rows that share a label as positives (its class's
    ``needs_labels``), so the loaders must carry the label column."""
    return any(LOSSES.get(p.loss).needs_labels for p in pair_specs(cfg))
