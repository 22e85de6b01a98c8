"""The objectives wired into training: selected per pair in the config, label-based losses fed the
batch's labels, anchor mode, per-pair weights and temperatures, a Symile term over three
modalities, Matryoshka prefixes; trained for a few steps on scikit-learn's real digits, learning,
checkpointed and reloaded. Bad objective configs fail naming their key."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.support.tiny import TINY_MODALITIES

TEXT2 = {"adapter": "text", **copy.deepcopy(TINY_MODALITIES["text"])}  # a second text tower on the captions


def config(tmp_path, model: dict | None = None, train: dict | None = None, three: bool = False):
    from align.config.schema import config_from_dict

    mods = copy.deepcopy(TINY_MODALITIES)
    columns = {"image": "image", "text": "caption"}
    if three:
        mods["text2"] = copy.deepcopy(TEXT2)
        columns["text2"] = "caption"
    return config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
            "model": {"embed_dim": 16, "modalities": mods, **(model or {})},
            "data": {"train": {"source": "sklearn-digits", "columns": columns, "label_column": "label"}},
            "train": {
                "batch_size": 32,
                "steps": 40,
                "lr": 2e-3,
                "weight_decay": 0.0,
                "progress": False,
                "log_every": 5,
                **(train or {}),
            },
        }
    )


def mean_loss(losses, part):
    values = [v for _, v in losses]
    return float(np.mean(values[:5] if part == "first" else values[-5:]))


def below_chance(losses, batch: int = 32) -> bool:
    """The last 10 steps' mean loss is well under ln(batch), what scoring every candidate alike
    gives (the tiny towers reach it within ~5 steps and need ~60 more to go below it)."""
    return float(np.mean([v for _, v in losses][-10:])) < 0.85 * np.log(batch)


def test_multi_positive_trains_on_the_labels(tmp_path):
    from align.app.trainer import train
    from align.objectives.task import ContrastiveTask

    cfg = config(tmp_path, {"loss": "multi_positive"})
    result = train(cfg)
    assert mean_loss(result.losses, "last") < 0.8 * mean_loss(result.losses, "first")
    task = ContrastiveTask.from_config(cfg, result.model)
    g = torch.Generator().manual_seed(0)
    emb = {m: torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=-1) for m in ("image", "text")}
    shared, distinct = torch.tensor([0, 1, 2] * 4), torch.arange(12)
    clip = ContrastiveTask.from_config(config(tmp_path, {"loss": "clip"}), result.model)
    torch.testing.assert_close(task.loss(emb, distinct), clip.loss(emb))  # distinct labels: CLIP
    assert abs(task.loss(emb, shared).item() - clip.loss(emb).item()) > 1e-2  # shared labels: positives


def test_anchor_weights_pair_temperatures_and_a_symile_term(tmp_path):
    import yaml

    from align.app.trainer import train
    from align.model.checkpoint import load_model

    cfg = config(
        tmp_path,
        {"pair_temperatures": True},
        {
            "anchor": "text",
            "steps": 200,
            "multiway": {"loss": "symile", "weight": 0.5, "modalities": ["image", "text", "text2"]},
        },
        three=True,
    )
    assert cfg.loss_pairs() == [("image", "text"), ("text2", "text")]
    result = train(cfg)
    assert below_chance(result.losses), result.losses[-10:]
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["model"]["pair_temperatures"] == [["image", "text"], ["text2", "text"]]
    scales = dict(result.model.pair_logit_scales.items())
    assert set(scales) == {"image|text", "text2|text"}
    start = float(np.log(1 / 0.07))
    assert all(abs(p.item() - start) > 1e-4 for p in scales.values())  # each learnt
    assert abs(scales["image|text"].item() - scales["text2|text"].item()) > 1e-5  # independently
    model, _ = load_model(tmp_path / "run")
    for k, p in model.pair_logit_scales.items():
        torch.testing.assert_close(p, scales[k].detach())


def test_weighted_pairs_and_matryoshka(tmp_path):
    from align.app.trainer import train
    from align.objectives.task import ContrastiveTask

    pairs = [{"modalities": ["image", "text"], "weight": 3.0}, {"modalities": ["text2", "text"], "loss": "dcl"}]
    cfg = config(tmp_path, {"matryoshka_dims": [4, 8, 16]}, {"pairs": pairs, "steps": 200}, three=True)
    result = train(cfg)
    # the loss is a sum over 3 prefixes: compare its last steps with its level after the first 5
    values = [v for _, v in result.losses]
    assert np.mean(values[-10:]) < 0.93 * np.mean(values[5:10]), values[::20]  # 3 x ln 32 = chance
    task = ContrastiveTask.from_config(cfg, result.model)
    g = torch.Generator().manual_seed(1)
    emb = {
        m: torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1) for m in ("image", "text", "text2")
    }
    a, b = (
        t.loss_fn(emb[t.modalities[0]], emb[t.modalities[1]], result.model.pair_scale(*t.modalities))
        for t in task.terms
    )
    torch.testing.assert_close(task.loss(emb), (3 * a + b) / 4)  # the weighted mean of the terms
    inner = task.terms[0].loss_fn.inner
    scale = result.model.pair_scale("image", "text")
    prefixes = sum(
        inner(
            torch.nn.functional.normalize(emb["image"][:, :d], dim=-1),
            torch.nn.functional.normalize(emb["text"][:, :d], dim=-1),
            scale,
        )
        for d in (4, 8, 16)
    )
    torch.testing.assert_close(a, prefixes)  # Matryoshka: the loss summed over the prefixes


@pytest.mark.parametrize(
    "model, train, three, key",
    [
        ({"loss": "multi_positive"}, {}, False, "model.loss"),  # (label_column removed below)
        ({}, {"multiway": {"loss": "symile", "modalities": ["image", "text"]}}, False, "train.multiway"),
        ({}, {"anchor": "audio"}, False, "train.anchor"),
        ({}, {"pairs": [["image", "text2"]]}, False, "train.pairs[0]"),
        ({"loss": "hcl", "loss_options": {"betta": 2.0}}, {}, False, "model.loss_options"),
        ({"matryoshka_dims": [8, 32]}, {}, False, "model.matryoshka_dims"),
    ],
)
def test_bad_objective_configs_name_their_key(tmp_path, model, train, three, key):
    from align.config.schema import config_from_dict
    from align.errors import ConfigError
    from align.model.align_model import AlignModel
    from align.objectives.task import ContrastiveTask

    data = config(tmp_path, three=three).model_dump(mode="json", by_alias=True)
    data["model"].update(model)
    data["train"].update(train)
    if model.get("loss") == "multi_positive":
        data["data"]["train"]["label_column"] = None
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        cfg = config_from_dict(data)
        ContrastiveTask.from_config(cfg, AlignModel(cfg.model))


def test_matryoshka_prefixes_evaluate_and_index(tmp_path):
    """A Matryoshka-trained model evaluated and indexed at a prefix: eval.dim and index build
    --dim use the first dims, re-normalised; queries against such an index are truncated to match."""
    import json

    from align.app.cli import main
    from align.app.trainer import train
    from align.config.schema import EvalConfig
    from align.eval.runner import evaluate

    cfg = config(tmp_path, {"matryoshka_dims": [4, 16]}, {"steps": 60})
    result = train(cfg)
    model = result.model.eval()
    data = {
        "source": "sklearn-digits",
        "split": "test",
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    }
    zs = {"templates": ["a photo of the number {}."]}
    scores = {}
    for dim in (None, 4, 16):
        metrics = evaluate(model, EvalConfig(data=data, zeroshot=zs, dim=dim))
        scores[dim] = metrics["zeroshot"]["top1"]
    assert model.output_dim is None  # restored
    assert scores[16] == scores[None] and scores[4] != scores[16], scores
    assert scores[4] > 0.2, scores  # the 4-dim prefix was trained too (chance 0.1)
    with pytest.raises(Exception, match="eval.dim"):
        evaluate(model, EvalConfig(data=data, zeroshot=zs, dim=32))
    spec = json.dumps(data)
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(tmp_path / "run"),
                "--modality",
                "image",
                "--data",
                spec,
                "--out",
                str(tmp_path / "idx4"),
                "--dim",
                "4",
            ]
        )
        == 0
    )
    from align.index.embedding_index import EmbeddingIndex

    assert EmbeddingIndex.load(tmp_path / "idx4").dim == 4
    assert (
        main(
            [
                "query",
                "--index",
                str(tmp_path / "idx4"),
                "--modality",
                "text",
                "--query",
                "a photo of the number seven.",
                "-k",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(tmp_path / "run"),
                "--modality",
                "image",
                "--data",
                spec,
                "--out",
                str(tmp_path / "idx99"),
                "--dim",
                "99",
            ]
        )
        == 2
    )
