"""Frozen towers computed once: a frozen tower's features for every training row, cached.

A tower that is frozen (``freeze: true``; ``layers.freeze_`` keeps it in eval mode) and whose
preprocessing is deterministic (``Preprocessor.deterministic_for``: a string caption, a SMILES
graph) gives the same features for a row at every step, so recomputing them each step is pure
waste: profiled on ChEBI-20, the frozen MiniLM forward was 73% of an 8 s step. Here they are
computed once, before the first step, with evaluation preprocessing in batches, and the training
batches carry only the row index for that modality (``build_loader`` leaves its column out); the
task looks the features up (``CachedFeatures``) and the model applies only the head.

Storage: ``memory`` (a float32 tensor [rows, feature_dim]) or ``disk`` (a memory-mapped file
``<cache_dir>/<tower hash>/<rows hash>.f32`` for sets larger than RAM, written under a temporary
name and renamed when complete, then reused by any run with the same tower weights and the same
rows). The file is trusted only with its checksum: ``<rows hash>.f32.json`` (sha256, bytes,
shape) is written beside it after it is complete and checked on every reuse; a file that does not
match (zeroed, edited, truncated, or with no checksum) is recomputed, saying why. Features are
checked finite as they are computed: a tower that gives NaN or inf is an error naming the rows and
the file, and nothing is cached. Results equal the uncached tower's up to float rounding from
batch padding (text batches are padded to their longest caption, masked out by the pooling).

Each process computes the whole cache (a forward over the training rows once, against one per
step otherwise); ``model.modalities.<m>.cache: off`` turns it off, ``memory`` / ``disk`` insist on it
and say why a tower does not qualify.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from align.config.schema import Config
from align.errors import ConfigError, SampleError
from align.io.atomic import atomic_file, write_atomic
from align.io.hashing import sha256_file
from align.io.manifest import file_entry
from align.modalities.layers import is_frozen
from align.model.align_model import AlignModel
from align.model.cached import CachedFeatures

log = logging.getLogger(__name__)
ENCODE_BATCH = 256


class FeatureCache:
    """Features of one modality's frozen tower by training row."""

    def __init__(self, features: torch.Tensor | np.ndarray, where: str = "memory") -> None:
        self.features, self.where = features, where

    def __len__(self) -> int:
        return len(self.features)

    def lookup(self, rows: torch.Tensor, device: torch.device | str) -> CachedFeatures:
        if isinstance(self.features, np.ndarray):  # memory-mapped: read just these rows
            out = torch.from_numpy(np.ascontiguousarray(self.features[rows.cpu().numpy()]))
        else:
            out = self.features[rows.cpu()]
        return CachedFeatures(out.to(device))


def qualifies(model: AlignModel, mod: str, values: list[Any]) -> str | None:
    """Why ``mod``'s tower cannot be cached (None when it can)."""
    adapter = model.adapters[mod]
    if not is_frozen(adapter):
        return "its tower trains (set freeze: true in its options to freeze it)"
    pre = adapter.preprocessor()
    if not pre.deterministic:
        return f"its preprocessing ({type(pre).__name__}) is random in training (crops, augmentation)"
    bad = next((i for i, raw in enumerate(values) if not pre.deterministic_for(raw)), None)
    if bad is not None:
        return f"row {bad}'s sample is not preprocessed deterministically (e.g. a list of captions)"
    return None


def tower_hash(model: AlignModel, mod: str) -> str:
    """sha256 of the tower's weights (names, shapes, bytes) and options: the disk cache's key."""
    h = hashlib.sha256(json.dumps(model.cfg.modalities[mod].options, sort_keys=True, default=str).encode())
    for name, t in model.adapters[mod].state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def rows_hash(values: list[Any]) -> str:
    h = hashlib.sha256()
    for raw in values:
        h.update(repr(raw).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


@torch.no_grad()
def encode_rows(
    model: AlignModel,
    mod: str,
    values: list[Any],
    device,
    write: Callable[[int, np.ndarray], None],
    name: str,
    where: str = "in memory",
) -> None:
    """Features of every row, in batches, evaluation preprocessing; ``write(start, features)``.
    Non-finite features are refused, naming the rows and where the cache was going (``where``)."""
    from accelerate.utils import send_to_device

    adapter = model.adapters[mod]
    pre = adapter.preprocessor()
    was_training = adapter.training
    adapter.to(device).eval()  # where the trainer will put the model anyway
    try:
        for start in range(0, len(values), ENCODE_BATCH):
            items = []
            for i, raw in enumerate(values[start : start + ENCODE_BATCH], start=start):
                try:
                    items.append(pre(raw, train=False))
                except (SampleError, OSError, ValueError, TypeError, RuntimeError) as err:
                    raise SampleError(f"{name} row {i} ({mod}), caching the frozen tower's features: {err}") from err
            batch = pre.collate(items)
            features = adapter(send_to_device(batch, device)).float().cpu().numpy()
            bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
            if len(bad):
                rows = ", ".join(str(start + int(i)) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
                raise SampleError(
                    f"{name} rows {rows} ({mod}): the frozen tower's features are not finite (NaN or inf), "
                    f"so nothing is cached ({where}); check the tower's weights"
                )
            write(start, features)
    finally:
        adapter.train(was_training)


def writer(array: np.ndarray) -> Callable[[int, np.ndarray], None]:
    def write(start: int, features: np.ndarray) -> None:
        array[start : start + len(features)] = features

    return write


def build_feature_caches(
    cfg: Config, model: AlignModel, table, device, say: Callable[[str], None] = print
) -> dict[str, FeatureCache]:
    """A ``FeatureCache`` for every training modality whose tower is frozen and preprocessing
    deterministic (``cache: auto``), or that insists (``memory`` / ``disk``: an error says why not)."""
    caches: dict[str, FeatureCache] = {}
    spec = cfg.data.train
    for mod, column in spec.columns.items():
        mode = cfg.model.modalities[mod].cache
        if mode == "off":
            continue
        values = list(table[column])
        why = qualifies(model, mod, values)
        if why is not None:
            if mode != "auto":
                raise ConfigError(f"config key 'model.modalities.{mod}.cache': cannot cache '{mod}': {why}")
            continue
        if mode == "disk":
            caches[mod] = disk_cache(cfg, model, mod, values, device, say)
            continue
        out = np.empty((len(values), model.adapters[mod].feature_dim), np.float32)
        encode_rows(model, mod, values, device, writer(out), "data.train")
        caches[mod] = FeatureCache(torch.from_numpy(out))
        say(f"{mod}: frozen tower's features computed once for {len(values)} rows (in memory)")
    return caches


def checksum_path(path: Path) -> Path:
    """Where a cache file's checksum lives: ``<rows hash>.f32.json`` beside it."""
    return path.with_name(path.name + ".json")


def mismatch(path: Path, shape: tuple[int, int]) -> str | None:
    """None when ``path`` is the file this cache wrote (size, shape and sha256 as recorded beside
    it); otherwise why it cannot be reused."""
    size = path.stat().st_size
    if size != shape[0] * shape[1] * 4:
        return f"{size} bytes, expected {shape[0] * shape[1] * 4} for {shape[0]} rows x {shape[1]} features"
    try:
        record = json.loads(checksum_path(path).read_text())
    except (OSError, ValueError):
        return f"no readable checksum ({checksum_path(path).name})"
    if record.get("shape") != list(shape) or record.get("bytes") != size:
        return f"its checksum file describes another shape ({record.get('shape')})"
    if record.get("sha256") != sha256_file(path):
        return "its content does not match the sha256 written with it (changed since it was computed)"
    return None


def disk_cache(cfg: Config, model: AlignModel, mod: str, values: list[Any], device, say) -> FeatureCache:
    root = Path(cfg.model.modalities[mod].cache_dir or Path(cfg.output_dir) / "feature_cache")
    path = root / tower_hash(model, mod) / f"{rows_hash(values)}.f32"
    shape = (len(values), model.adapters[mod].feature_dim)
    if path.exists():
        why = mismatch(path, shape)
        if why is None:
            say(f"{mod}: frozen tower's features reused from {path} (sha256 verified)")
            return FeatureCache(np.memmap(path, np.float32, "r", shape=shape), where=str(path))
        say(f"{mod}: the feature cache {path} is not reused, {why}: recomputing it")
        checksum_path(path).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:  # complete, or not there: a killed run leaves only a .tmp- file
        out = np.memmap(tmp, np.float32, "w+", shape=shape)
        encode_rows(model, mod, values, device, writer(out), "data.train", where=str(path))
        out.flush()
        del out  # unmapped before the rename
    # the checksum last: a file without one (a run killed here) is recomputed, never trusted
    write_atomic(
        checksum_path(path),
        json.dumps({**file_entry(path), "shape": list(shape)}),  # the manifests' {bytes, sha256} entry
    )
    say(f"{mod}: frozen tower's features computed once for {shape[0]} rows ({path})")
    return FeatureCache(np.memmap(path, np.float32, "r", shape=shape), where=str(path))
