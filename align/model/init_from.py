"""``model.init_from``: a new run's towers and heads start from an align checkpoint (a run trained on
another set: the "pretrained" towers a fine-tuning run starts from).

Tensors are matched by name under ``adapters.<modality>.`` and ``heads.<modality>.`` for each chosen
modality (plus ``logit_scale`` / ``logit_bias`` unless ``logit_scale: false``), and must have the
same shape: a mismatch is an error naming the tensor and both shapes, never a silent partial load.
What is reported: per modality, the tensors loaded; the run's tensors left as initialised (a new
modality, a new head); the checkpoint's tensors not used (a modality the run does not have or did not
choose). The checkpoint is verified against its own manifest and checked finite before anything
is copied, so a refused checkpoint leaves the model as it was. EMA towers (``model.momentum``)
restart from the loaded towers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from align.errors import ConfigError
from align.model.checkpoint import CheckpointError, check_finite, resolve_checkpoint, verify_files
from align.model.lora import base_key, is_lora_key

SHARED = ("logit_scale", "logit_bias")


def _modality(key: str) -> str | None:
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] in ("adapters", "heads") else None


def init_from_checkpoint(model, spec, key: str = "model.init_from") -> dict[str, Any]:
    """Copy the chosen towers' tensors of the checkpoint ``spec.path`` into ``model``; returns
    ``{"checkpoint", "loaded": {modality: n tensors}, "new": [names], "dropped": [names]}``."""
    from safetensors.torch import load_file

    try:
        ckpt = resolve_checkpoint(spec.path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config key '{key}.path': {e}") from None
    verify_files(ckpt, ["model.safetensors"])
    path = Path(ckpt) / "model.safetensors"
    try:
        state = load_file(str(path))
    except Exception as err:  # a truncated or overwritten file
        raise CheckpointError(f"{path}: cannot be read as safetensors ({type(err).__name__}: {err})") from err
    check_finite(state.items(), path)
    theirs = sorted({m for k in state if (m := _modality(k)) is not None})
    wanted = spec.modalities if spec.modalities is not None else [m for m in model.adapters if m in theirs]
    for i, mod in enumerate(wanted):
        if mod not in model.adapters:
            raise ConfigError(f"config key '{key}.modalities[{i}]': the run has no '{mod}' ({model.modalities})")
        if mod not in theirs:
            raise ConfigError(f"config key '{key}.modalities[{i}]': checkpoint {ckpt} has no '{mod}' ({theirs})")
    own = model.state_dict()
    by_base = {base_key(k): k for k in own if not is_lora_key(k)}  # a LoRA tower's base_layer names
    take = {
        k: v
        for k, v in state.items()
        if (_modality(k) in wanted and not k.startswith("momentum.")) or (spec.logit_scale and k in SHARED)
    }
    for k, v in take.items():
        if k not in by_base:
            mod = _modality(k)
            raise ConfigError(
                f"config key '{key}': checkpoint tensor '{k}' has no place in the run's {mod or 'model'} "
                f"(a different architecture: compare model.modalities.{mod}.options with the checkpoint's)"
            )
        if tuple(own[by_base[k]].shape) != tuple(v.shape):
            raise ConfigError(
                f"config key '{key}': tensor '{k}' is {tuple(v.shape)} in {ckpt} but {tuple(own[by_base[k]].shape)} in "
                f"the run (a different architecture or embed_dim)"
            )
    with torch.no_grad():
        for k, v in take.items():
            own[by_base[k]].copy_(v.to(own[by_base[k]].dtype))
        if model.momentum is not None:  # the EMA towers restart from the loaded ones
            for mod in wanted:
                model.momentum.adapters[mod].load_state_dict(model.adapters[mod].state_dict())
                model.momentum.heads[mod].load_state_dict(model.heads[mod].state_dict())
    loaded: dict[str, int] = {}
    for k in take:
        loaded[_modality(k) or "shared"] = loaded.get(_modality(k) or "shared", 0) + 1
    targeted = {by_base[k] for k in take}
    new = sorted(k for k in own if k not in targeted and not k.startswith("momentum.") and _modality(k) is not None)
    dropped = sorted(k for k in state if k not in take and not k.startswith("momentum."))
    return {"checkpoint": str(ckpt), "loaded": loaded, "new": new, "dropped": dropped}


def describe(report: dict[str, Any]) -> str:
    """The report as the lines ``align train`` prints."""

    def tensors(names: list[str]) -> str:
        mods = sorted({_modality(k) or k for k in names})
        return f"{len(names)} tensors ({', '.join(mods)})" if names else "none"

    loaded = ", ".join(f"{m} {n}" for m, n in report["loaded"].items()) or "nothing"
    return (
        f"init_from {report['checkpoint']}: loaded {loaded} tensors; new (as initialised): "
        f"{tensors(report['new'])}; not used from the checkpoint: {tensors(report['dropped'])}"
    )
