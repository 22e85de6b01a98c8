"""Checkpoints that are written atomically and load without executing code.

Layout of ``<output_dir>/checkpoints/step-000100/``::

    model.safetensors    model weights (safetensors)
    training_state.pt    optimizer, scheduler, step, RNG states (tensors and plain data only;
                         loaded with ``torch.load(weights_only=True)``)
    config.yaml          the run's validated config, so a checkpoint rebuilds its own model

Everything is written into a temporary sibling folder first and renamed into place, then the
``latest`` pointer file is replaced atomically, so a crash never leaves a half checkpoint named
as a real one.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align.config import Config, dump_config, load_config


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt_root: str | Path, step: int, model: torch.nn.Module, cfg: Config,
                    training_state: dict[str, Any] | None = None, keep: int | None = None,
                    name: str | None = None, update_latest: bool = True) -> Path:
    """Write one checkpoint folder atomically and point ``latest`` at it."""
    from safetensors.torch import save_file

    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = name or f"step-{step:06d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.tmp-"))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        state = {"step": step, "rng": rng_state(), **(training_state or {})}
        torch.save(state, tmp / "training_state.pt")
        dump_config(cfg, tmp / "config.yaml")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest:
        _atomic_write_text(root / "latest", name + "\n")
    if keep:
        steps = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder, a ``checkpoints`` root (uses ``latest``) or a run folder."""
    p = Path(path)
    for root in (p, p / "checkpoints"):
        if (root / "model.safetensors").is_file():
            return root
        if (root / "latest").is_file():
            target = root / (root / "latest").read_text().strip()
            if (target / "model.safetensors").is_file():
                return target
            raise FileNotFoundError(f"{root / 'latest'} points at {target}, which holds no checkpoint")
    raise FileNotFoundError(f"no checkpoint found at {p}")


def load_training_state(ckpt: str | Path) -> dict[str, Any]:
    return torch.load(Path(ckpt) / "training_state.pt", map_location="cpu", weights_only=True)


def load_weights(model: torch.nn.Module, ckpt: str | Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(Path(ckpt) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def load_model(path: str | Path):
    """Rebuild an ``AlignModel`` from a checkpoint (its own config + weights), in eval mode."""
    from align.model import AlignModel

    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt / "config.yaml")
    for spec in cfg.model.modalities.values():  # weights come from the checkpoint, not a download
        if spec.options.get("pretrained"):
            spec.options["pretrained"] = None
    model = AlignModel(cfg.model)
    load_weights(model, ckpt)
    return model.eval(), cfg
