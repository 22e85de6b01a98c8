"""``align lora merge CHECKPOINT --out DIR``: a LoRA run's adapters folded into its base weights,
saved as a plain checkpoint of the same architecture (no ``lora``, no base reference), which
encodes as the LoRA model does (tested to 1e-5) and loads anywhere a checkpoint does."""

from __future__ import annotations

from pathlib import Path

from align.errors import ConfigError
from align.model.align_model import AlignModel
from align.model.checkpoint import checkpoint_step, load_model, resolve_checkpoint, save_checkpoint
from align.model.lora import lora_modalities, merge_lora


def merged_model(model, cfg) -> tuple[AlignModel, object]:
    """``model`` with its LoRA adapters folded in, as a plain model, and its config without ``lora``."""
    mods = lora_modalities(cfg.model)
    state = merge_lora(model)
    plain = cfg.model_copy(deep=True)
    for mod in mods:
        plain.model.modalities[mod].lora = None
    plain.model.init_from = None  # its weights are all here now
    merged = AlignModel(plain.model)
    merged.load_state_dict(state, strict=True)
    return merged.eval(), plain


def merge_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the merged checkpoint under ``out`` (``out/step-N``, ``out/latest``); returns its folder."""
    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    if not lora_modalities(cfg.model):
        raise ConfigError(f"checkpoint {ckpt}: no tower has model.modalities.<m>.lora; there is nothing to merge")
    merged, plain = merged_model(model, cfg)
    return save_checkpoint(out, checkpoint_step(ckpt) or 0, merged, plain)
