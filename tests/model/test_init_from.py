"""align.model.init_from: a run starts its towers from another run's checkpoint (issue 24 item 0),
checked by name and shape, and says what it loaded, what is new and what it left out."""

from __future__ import annotations

import copy

import pytest
import torch

from align.app.trainer import train
from align.config.schema import config_from_dict
from align.errors import ConfigError
from align.model.align_model import AlignModel
from align.model.checkpoint import load_model, resolve_checkpoint
from align.model.init_from import init_from_checkpoint
from tests.support.tiny import DIGITS_MODEL

DATA = {
    "source": "sklearn-digits",
    "split": "train",
    "columns": {"image": "image", "text": "caption"},
    "label_column": "label",
}


def config(tmp_path, name: str, model: dict, steps: int = 20):
    return config_from_dict(
        {
            "output_dir": str(tmp_path / name),
            "seed": 0,
            "model": model,
            "data": {"train": DATA, "num_workers": 0},
            "train": {"steps": steps, "batch_size": 64, "lr": 2e-3, "warmup_steps": 5, "log_every": 10},
        }
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    return resolve_checkpoint(train(config(tmp, "pre", copy.deepcopy(DIGITS_MODEL), steps=150)).output_dir)


def tower(model, mod: str) -> dict:
    prefix = (f"adapters.{mod}.", f"heads.{mod}.")
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_every_tower_or_a_chosen_one_starts_from_the_checkpoint(pretrained, tmp_path, capsys):
    source, _ = load_model(pretrained)
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["init_from"] = str(pretrained.parent.parent)  # the run folder: its newest checkpoint
    cfg = config(tmp_path, "fine", spec, steps=1)
    model = AlignModel(cfg.model)
    report = init_from_checkpoint(model, cfg.model.init_from)
    assert set(report["loaded"]) == {"image", "text", "shared"} and not report["new"] and not report["dropped"]
    for mod in ("image", "text"):
        assert all(torch.equal(v, tower(source, mod)[k]) for k, v in tower(model, mod).items())
    spec["init_from"] = {"path": str(pretrained), "modalities": ["image"], "logit_scale": False}
    model = AlignModel(config(tmp_path, "fine2", spec).model)
    fresh = {k: v.clone() for k, v in tower(model, "text").items()}
    report = init_from_checkpoint(model, config(tmp_path, "fine2", spec).model.init_from)
    assert set(report["loaded"]) == {"image"} and report["new"] and all(".text." in k for k in report["new"])
    assert all(".text." in k or k.startswith("logit") for k in report["dropped"])
    assert all(torch.equal(v, fresh[k]) for k, v in tower(model, "text").items())
    # through align train: printed, and training goes on from the loaded towers
    spec["init_from"] = str(pretrained)
    result = train(config(tmp_path, "fine3", spec, steps=3))
    out = capsys.readouterr().out
    assert f"init_from {pretrained}: loaded image" in out and "trainable parameters per tower" in out
    spec.pop("init_from")
    fresh = train(config(tmp_path, "fresh", spec, steps=3))
    # the loaded towers already align the digits: the first step's loss is far below a fresh model's (~ln 64)
    assert result.losses[0][1] < fresh.losses[0][1] - 1.0, (result.losses, fresh.losses)


def test_a_checkpoint_of_another_shape_or_without_the_tower_is_refused(pretrained, tmp_path):
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["embed_dim"] = 16
    spec["init_from"] = str(pretrained)
    cfg = config(tmp_path, "bad", spec)
    model = AlignModel(cfg.model)
    with pytest.raises(ConfigError, match=r"tensor 'heads.image.weight' is \(32, 32\) in .* but \(16, 32\) in the run"):
        init_from_checkpoint(model, cfg.model.init_from)
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["init_from"] = {"path": str(pretrained), "modalities": ["audio"]}
    cfg = config(tmp_path, "bad2", spec)
    with pytest.raises(ConfigError, match=r"model.init_from.modalities\[0\]': the run has no 'audio'"):
        init_from_checkpoint(AlignModel(cfg.model), cfg.model.init_from)
    spec["init_from"] = {"path": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match=r"model.init_from.path"):
        cfg = config(tmp_path, "bad3", spec)
        init_from_checkpoint(AlignModel(cfg.model), cfg.model.init_from)
