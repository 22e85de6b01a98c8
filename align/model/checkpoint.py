"""Checkpoints that are written atomically and load without executing code.

Layout of ``<output_dir>/checkpoints/step-000100/``::

    model.safetensors    model weights (safetensors)
    training_state.pt    optimizer, scheduler, step, RNG states (tensors and plain data only;
                         loaded with ``torch.load(weights_only=True)``)
    config.yaml          the run's validated config, so a checkpoint rebuilds its own model
    manifest.json        bytes and sha256 of each file above, and the step (``align.io.manifest``;
                         manifests of earlier versions, which said ``size``, still load)

Everything is written into a temporary sibling folder first and renamed into place, then the
``latest`` pointer file is replaced atomically, so a crash never leaves a half checkpoint named
as a real one. Atomic writes do not protect against what happens to the files afterwards (a disk
error, a partial copy, an editor, a NaN that got saved): the manifest is written before the rename
and checked on every load, and loaded tensors must be finite, so a damaged checkpoint is refused
with its file (and tensor) named instead of silently training on from garbage. A checkpoint with
no manifest is refused too (``align --trust-unverified`` loads it, with a warning).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align.config.schema import Config, dump_config, load_config
from align.errors import AlignError
from align.io import manifest as _manifest
from align.io.atomic import atomic_folder, write_atomic
from align.io.hashing import sha256_file
from align.io.manifest import MANIFEST, TRUST_UNVERIFIED_ENV, ManifestError
from align.model.align_model import AlignModel
from align.model.lora import adapter_only, base_key, lora_modalities
from align.registry import ADAPTERS

# v2: files entries say "bytes" (v1 said "size"); both are read
MANIFEST_FORMAT = "align.model.checkpoint/v2"
_STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(AlignError, ValueError):
    """A checkpoint file is missing, damaged or holds non-finite numbers; the message names the file
    (and the tensor) and what is wrong, so the user knows which checkpoint to drop."""


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


BASE = "base.json"  # a LoRA checkpoint's reference to its base checkpoint


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    model: torch.nn.Module,
    cfg: Config,
    training_state: dict[str, Any] | None = None,
    keep: int | None = None,
    name: str | None = None,
    update_latest: bool = True,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint folder atomically (files, then their manifest, then one rename) and
    point ``latest`` at it. ``weights``: the full state dict when the model is sharded (FSDP,
    DeepSpeed: ``accelerator.get_state_dict`` gathers it); default ``model.state_dict()``."""
    from safetensors.torch import save_file

    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = name or f"step-{step:06d}"
    final = root / name
    # e.g. 'best' is replaced: the old one moves aside so the name is never empty for long
    with atomic_folder(final, exists="replace") as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in (weights or model.state_dict()).items()}
        base = lora_base(cfg)
        if base is not None:  # a LoRA run from a base checkpoint: its adapters, and the base by reference
            weights = adapter_only(weights, cfg.model)
            write_atomic(tmp / BASE, json.dumps(base, indent=1) + "\n")
        save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        state = {"step": step, "rng": rng_state(), **(training_state or {})}
        torch.save(state, tmp / "training_state.pt")
        dump_config(cfg, tmp / "config.yaml")
        write_manifest(tmp, step)
    if update_latest:
        write_atomic(root / "latest", name + "\n")
    if keep:  # never the one just written, even if an earlier run left higher steps here
        for _, old_step in step_folders(root)[keep:]:
            if old_step != final:
                shutil.rmtree(old_step, ignore_errors=True)
    return final


def step_folders(root: str | Path) -> list[tuple[int, Path]]:
    """``step-N`` checkpoint folders under ``root`` as (N, path), newest first (by number, so
    step-1000000 sorts after step-999999)."""
    found = []
    for p in Path(root).glob("step-*"):
        m = _STEP_FOLDER.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def write_manifest(folder: Path, step: int) -> None:
    """Record bytes and sha256 of every file in ``folder``, and the step (``atomic_folder`` fsyncs
    them before the folder is renamed into place)."""
    _manifest.write_manifest(folder, {"format": MANIFEST_FORMAT, "step": step})


def read_manifest(ckpt: str | Path) -> dict[str, Any] | None:
    """The checkpoint's manifest (files as ``{bytes, sha256}``, whichever version wrote it), or None
    for a checkpoint written before manifests existed."""
    try:
        return _manifest.read_manifest(ckpt)
    except ManifestError as err:
        raise CheckpointError(str(err)) from None


def verify_files(ckpt: str | Path, names: Iterable[str]) -> None:
    """Check ``names`` in ``ckpt`` against its manifest (listed, present, bytes, sha256). A checkpoint
    with no manifest cannot be checked, so it is refused: every checkpoint align writes has one, and
    deleting it must not turn verification off. ``align --trust-unverified`` (the
    ``ALIGN_TRUST_UNVERIFIED=1`` environment variable) loads one anyway, with a warning."""
    ckpt = Path(ckpt)
    manifest = read_manifest(ckpt)
    if manifest is None:
        if os.environ.get(TRUST_UNVERIFIED_ENV, "") not in ("", "0"):
            warnings.warn(
                f"checkpoint {ckpt} has no {MANIFEST}: loaded unverified (--trust-unverified); its "
                "files cannot be checked for damage",
                UserWarning,
                stacklevel=3,
            )
            return
        raise CheckpointError(
            f"checkpoint {ckpt} has no {MANIFEST}, so its files cannot be checked for damage (it was "
            f"deleted, or the folder was not written by align); rerun with `align --trust-unverified "
            f"...` (or {TRUST_UNVERIFIED_ENV}=1) to load it unverified"
        )
    try:
        _manifest.verify_files(ckpt, names, manifest)
    except ManifestError as err:
        raise CheckpointError(str(err)) from None


def _tensors(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted name, value) for every tensor and float in nested dicts/lists/tuples."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{i}" if prefix else str(i))
    elif isinstance(obj, (torch.Tensor, float)):
        yield prefix, obj


def check_finite(named: Iterable[tuple[str, Any]], path: Path) -> None:
    """Refuse NaN/inf in weights or optimizer state: resuming from them would carry them into every
    later checkpoint (and a non-finite loss check only fires once they reach the loss)."""
    for name, value in named:
        if isinstance(value, float):
            if not np.isfinite(value):
                raise CheckpointError(f"{path}: '{name}' is {value}; refusing a checkpoint with non-finite values")
        elif (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{path}: tensor '{name}' holds {bad} non-finite value(s) (NaN/inf) of "
                f"{value.numel()}; refusing a checkpoint with non-finite values"
            )


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
    """Optimizer, scheduler, step, RNG and run records; verified against the manifest, read with
    ``weights_only=True`` (no code runs), and refused if the optimizer state is not finite."""
    path = Path(ckpt) / "training_state.pt"
    verify_files(ckpt, ["training_state.pt"])
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # EOFError, zip RuntimeError, UnpicklingError ... all mean the same here
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a training state (no 'step')")
    check_finite(_tensors({k: v for k, v in state.items() if k != "rng"}, ""), path)
    return state


def load_weights(model: torch.nn.Module, ckpt: str | Path) -> None:
    """Verified, finite weights into ``model``; the model is untouched when the checkpoint is refused."""
    from safetensors.torch import load_file

    path = Path(ckpt) / "model.safetensors"
    verify_files(ckpt, ["model.safetensors"])
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(str(path))
    except Exception as err:  # SafetensorError, OSError: a truncated or overwritten file
        raise CheckpointError(f"{path}: cannot be read as safetensors ({type(err).__name__}: {err})") from err
    check_finite(state.items(), path)
    if (Path(ckpt) / BASE).is_file():  # adapters only: the base's tensors first, under the model's names
        state = {**base_weights(ckpt, model), **state}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def lora_base(cfg) -> dict[str, str] | None:
    """``{"path", "sha256"}`` of the base checkpoint a LoRA run's checkpoints refer to (None: not one)."""
    if cfg.model.init_from is None or not lora_modalities(cfg.model):
        return None
    base = resolve_checkpoint(cfg.model.init_from.path)
    # the manifest's digest: what model.init_from verified and loaded at the start (re-hashing the base
    # at every checkpoint would read all of it again each time)
    entry = ((read_manifest(base) or {}).get("files") or {}).get("model.safetensors")
    digest = entry["sha256"] if entry else sha256_file(base / "model.safetensors")
    return {"path": str(base.resolve()), "sha256": digest}


def base_weights(ckpt: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base checkpoint's tensors named as ``model``'s (LoRA's ``base_layer`` names), after
    checking its weights are the ones the adapters were trained on (sha256 in ``base.json``)."""
    from safetensors.torch import load_file

    verify_files(ckpt, [BASE])
    ref = json.loads((Path(ckpt) / BASE).read_text())
    base = Path(ref["path"])
    path = base / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: its base checkpoint {base} (in {BASE}) is gone; LoRA weights need it")
    digest = sha256_file(path)
    if digest != ref["sha256"]:
        raise CheckpointError(
            f"{ckpt}: its base {path} changed (sha256 {digest[:16]}..., the adapters were trained on "
            f"{ref['sha256'][:16]}...): the LoRA weights no longer apply to it"
        )
    theirs = load_file(str(path))
    check_finite(theirs.items(), path)
    out = {}
    for name in model.state_dict():
        if base_key(name) in theirs and ".lora_" not in name:
            out[name] = theirs[base_key(name)]
    return out


def checkpoint_step(ckpt: str | Path) -> int | None:
    """The step a checkpoint was written at, without ``training_state.pt`` (which an exported
    checkpoint may leave out): the weights' safetensors metadata, else the manifest."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(ckpt) / "model.safetensors"), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
        if step is not None:
            return int(step)
    except Exception:  # noqa: BLE001 -- unreadable weights are reported by load_weights, not here
        pass
    try:
        manifest = read_manifest(ckpt)
    except CheckpointError:
        return None
    step = (manifest or {}).get("step")
    return int(step) if isinstance(step, int) else None


def load_model(path: str | Path):
    """Rebuild an ``AlignModel`` from a checkpoint (its own config + weights), in eval mode."""
    ckpt = resolve_checkpoint(path)
    verify_files(ckpt, ["config.yaml"])
    cfg = load_config(ckpt / "config.yaml")

    for mod, spec in cfg.model.modalities.items():  # weights come from the checkpoint, not a download
        spec.options = ADAPTERS.get(spec.adapter_name(mod)).reload_options(spec.options)
    model = AlignModel(cfg.model)
    load_weights(model, ckpt)
    return model.eval(), cfg
