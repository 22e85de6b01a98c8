"""align.model.locking: which parameters of a tower train, one mechanism for every tower (issue 24
item 1): groups found from the tower's blocks, regex patterns, BitFit, a fully locked tower frozen as
options.freeze freezes one; a short run on real digits changes only what the lock leaves trainable."""

from __future__ import annotations

import copy

import pytest
import torch

from align.config.schema import ModelConfig, config_from_dict
from align.errors import ConfigError
from align.modalities.layers import is_frozen
from align.model.align_model import AlignModel
from align.model.locking import parameter_groups, trainable_report
from tests.data.test_streaming import TINY_AST
from tests.support.tiny import DIGITS_MODEL

GRAPH = {"encoder": "gin", "layers": 3, "width": 16, "node_vocab": "smiles", "edge_vocab": "smiles"}


def model_with(locks: dict, extra: dict | None = None) -> AlignModel:
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"].update(extra or {})
    for mod, lock in locks.items():
        spec["modalities"][mod]["lock"] = lock
    return AlignModel(ModelConfig(**spec))


def trainable(model: AlignModel, mod: str) -> set[str]:
    return {n for n, p in model.adapters[mod].named_parameters() if p.requires_grad}


def test_groups_come_from_each_towers_blocks():
    extra = {"audio": {"options": dict(TINY_AST)}, "graph": {"options": GRAPH}}
    model = model_with({}, extra)
    image = parameter_groups(model.adapters["image"])
    assert "tower.conv1.weight" in image[0] and any(".resblocks.0." in n for n in image[1])
    assert {"tower.proj", "tower.ln_post.weight"} <= set(image[-1])  # the projection is applied after the blocks
    assert "tower.text_projection" in parameter_groups(model.adapters["text"])[-1]
    assert len(parameter_groups(model.adapters["graph"])) >= 3  # its message-passing layers are blocks
    assert len(parameter_groups(model.adapters["audio"])) == 3  # before, 1 transformer layer, after


def test_unlocked_groups_patterns_bitfit_and_errors():
    model = model_with({"image": {"unlocked_groups": 1}, "text": {"bitfit": True}})
    groups = parameter_groups(model.adapters["image"])
    assert trainable(model, "image") == set(groups[-1])
    text = trainable(model, "text")
    assert text and all(n.endswith("bias") or "ln" in n for n in text), text
    assert all(p.requires_grad for p in model.heads["image"].parameters())  # heads train unless lock.head
    model = model_with({"image": {"all": True, "unlock_patterns": [r"ln_post"], "head": True}})
    assert trainable(model, "image") == {"tower.ln_post.weight", "tower.ln_post.bias"}
    assert not any(p.requires_grad for p in model.heads["image"].parameters())
    with pytest.raises(
        ConfigError,
        match=r"model.modalities.image.lock.patterns\[0\]': 'resblock_9' matches no "
        r"parameter; they are: tower.class_embedding",
    ):
        model_with({"image": {"patterns": ["resblock_9"]}})
    with pytest.raises(ConfigError, match=r"lock.unlocked_groups': 7 groups asked, the tower has 3"):
        model_with({"image": {"unlocked_groups": 7}})
    with pytest.raises(ValueError, match="unlocked_grups"):
        model_with({"image": {"unlocked_grups": 1}})


def test_a_fully_locked_tower_is_frozen_like_options_freeze():
    model = model_with({"image": {"all": True}})
    assert is_frozen(model.adapters["image"]) and getattr(model.adapters["image"], "align_frozen", False)
    model.train()
    assert not model.adapters["image"].training and model.adapters["text"].training
    report = trainable_report(model)
    assert "image: 0.00 M of" in report and "text:" in report


def test_a_locked_run_changes_only_the_unlocked_parameters(tmp_path):
    from align.app.trainer import train

    data = {
        "source": "sklearn-digits",
        "split": "train",
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    }
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"]["image"]["lock"] = {"unlocked_groups": 1}
    spec["modalities"]["text"]["lock"] = {"patterns": ["token_embedding"]}
    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
            "model": spec,
            "data": {"train": data, "num_workers": 0},
            "train": {"steps": 30, "batch_size": 32, "lr": 0.003, "log_every": 10},
        }
    )
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in AlignModel(cfg.model).state_dict().items()}
    torch.manual_seed(0)
    result = train(cfg)
    after = result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k].cpu())}
    groups = parameter_groups(result.model.adapters["image"])
    image_train = {f"adapters.image.{n}" for n in groups[-1]}
    assert {k for k in changed if k.startswith("adapters.image.")} <= image_train
    assert "adapters.text.tower.token_embedding.weight" not in changed
    assert any(k.startswith("adapters.text.tower.transformer") for k in changed)  # the rest of the text tower trains
    assert result.losses[-1][1] < result.losses[0][1]  # it learns
