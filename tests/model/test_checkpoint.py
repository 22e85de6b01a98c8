"""Checkpoint folders and their manifest: what today's code writes, and checkpoints written by
earlier versions (manifest entries with ``size`` instead of ``bytes``) still load and are still
verified. A tiny open_clip image<->text model; no training needed to test the files."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

from align.config.schema import config_from_dict, load_config
from align.model.align_model import AlignModel
from align.model.checkpoint import CheckpointError, load_model, load_training_state, load_weights, save_checkpoint
from tests.support.tiny import TINY_MODALITIES

DIGITS_TRAIN = {
    "source": "sklearn-digits",
    "split": "train",
    "max_samples": 64,
    "columns": {"image": "image", "text": "caption"},
    "label_column": "label",
}


@pytest.fixture
def saved(tmp_path) -> tuple[Path, AlignModel]:
    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "seed": 3,
            "model": {"embed_dim": 16, "modalities": TINY_MODALITIES},
            "data": {"train": DIGITS_TRAIN},
            "train": {"steps": 4},
        }
    )
    torch.manual_seed(0)
    model = AlignModel(cfg.model)
    return save_checkpoint(tmp_path / "run" / "checkpoints", 4, model, cfg, {"note": "x"}), model


def write_old_manifest(ckpt: Path) -> None:
    """The manifest exactly as align wrote it before the schemas were one (align.model.checkpoint/v1:
    per-file ``size`` and ``sha256``, indent 1)."""
    files = {}
    for path in sorted(p for p in ckpt.iterdir() if p.is_file() and p.name != "manifest.json"):
        files[path.name] = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    text = json.dumps({"format": "align.model.checkpoint/v1", "step": 4, "files": files}, indent=1)
    (ckpt / "manifest.json").write_text(text + "\n")


def flip(path: Path, offset: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0xFF for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_manifest_lists_bytes_and_sha256_of_every_file(saved):
    ckpt, _ = saved
    m = json.loads((ckpt / "manifest.json").read_text())
    assert m["format"] == "align.model.checkpoint/v2" and m["step"] == 4
    assert set(m["files"]) == {"model.safetensors", "training_state.pt", "config.yaml"}
    for name, entry in m["files"].items():
        assert entry == {
            "bytes": (ckpt / name).stat().st_size,
            "sha256": hashlib.sha256((ckpt / name).read_bytes()).hexdigest(),
        }
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    assert (ckpt.parent / "latest").read_text() == "step-000004\n"


def test_checkpoint_with_the_old_size_manifest_loads_without_warning(saved):
    ckpt, model = saved
    write_old_manifest(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified, so no "cannot be checked" warning
        loaded, cfg = load_model(ckpt)
        assert load_training_state(ckpt)["note"] == "x"
    assert same_weights(loaded, model) and cfg.model.embed_dim == 16


def test_old_size_manifest_still_refuses_damage_naming_the_file(saved):
    ckpt, _ = saved
    write_old_manifest(ckpt)
    weights = ckpt / "model.safetensors"
    original = weights.read_bytes()
    flip(weights, len(original) // 2)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: content is damaged \(sha256"):
        load_model(ckpt)
    weights.write_bytes(original[: len(original) // 3])
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: \d+ bytes where manifest\.json says "
        rf"{len(original)} \(truncated\)",
    ):
        load_weights(AlignModel(load_config(ckpt / "config.yaml").model), ckpt)
    weights.write_bytes(original)
    flip(ckpt / "training_state.pt", 40, 8)
    with pytest.raises(CheckpointError, match=r"training_state\.pt: content is damaged"):
        load_training_state(ckpt)


def test_unreadable_manifest_is_named(saved):
    ckpt, _ = saved
    (ckpt / "manifest.json").write_text('{"files": {"model.safetensors": {"size": 1}}}')
    with pytest.raises(CheckpointError, match=r"manifest\.json: unreadable manifest"):
        load_model(ckpt)


def test_replacing_a_named_checkpoint_leaves_one_whole_folder(saved):
    ckpt, model = saved
    cfg = load_model(ckpt)[1]
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
    best = save_checkpoint(ckpt.parent, 4, model, cfg, name="best", update_latest=False)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    assert save_checkpoint(ckpt.parent, 5, model, cfg, name="best", update_latest=False) == best
    assert float(load_model(best)[0].logit_scale.detach()) == 2.5
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best", "latest", "step-000004"]
