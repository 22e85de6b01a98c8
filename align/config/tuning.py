"""Config of fine-tuning from pretrained weights: where a run's towers start (``model.init_from``) and
which of their parameters train (``model.modalities.<m>.lock``). Applied by ``align/model/init_from.py``
and ``align/model/locking.py``."""

from __future__ import annotations

from pydantic import Field, NonNegativeInt

from align.config.dataset import Strict


class LockSpec(Strict):
    """Which parameters of one tower train; the steps apply in the order of the fields."""

    all: bool = Field(False, description="freeze the whole tower (as options.freeze)")
    unlocked_groups: NonNegativeInt | None = Field(
        None,
        description="freeze all but the last N groups (a group: what precedes the tower's blocks, each "
        "block, what follows them); 1 trains only what follows the blocks",
    )
    patterns: list[str] = Field(default_factory=list, description="regexes: matching parameters are frozen")
    bitfit: bool = Field(False, description="train only biases and normalisation parameters (BitFit)")
    unlock_patterns: list[str] = Field(
        default_factory=list, description="regexes: matching parameters train, whatever the steps before froze"
    )
    head: bool = Field(False, description="freeze the modality's projection head too")


class InitFromSpec(Strict):
    """Start the run's towers and heads from an align checkpoint."""

    path: str = Field(description="an align run folder (its newest checkpoint) or a checkpoint folder")
    modalities: list[str] | None = Field(
        None, description="the towers to take (default: every modality both the run and the checkpoint have)"
    )
    logit_scale: bool = Field(True, description="take the checkpoint's temperature (and bias) too")


class LoraSpec(Strict):
    """Low-rank adapters on one tower through peft (``align/model/lora.py``): only they train."""

    target_modules: str | list[str] = Field(
        description="peft's target_modules: a regex matched against whole module names, or a list of "
        "name suffixes, e.g. '.*(attn|mlp\\\\.c_fc|mlp\\\\.c_proj)$' for open_clip blocks, [query, value] for BERT"
    )
    r: int = Field(8, gt=0, description="rank")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (the update is B A * alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    dora: bool = Field(False, description="weight-decomposed LoRA (DoRA, peft's use_dora)")
