"""What a new user sees: ``align data`` / ``--dry-run`` before training, a log with wall time and
throughput, the eval report in the run folder, one clear error line (traceback only with
``--debug``), HF progress bars that obey ``train.progress``, de-duplicated templated retrieval and
``align.encode`` on raw items. All on scikit-learn's real digits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import align
from align.app.cli import main
from tests.support.tiny import TINY_MODALITIES  # tests/ is on sys.path (no __init__.py)

TEMPLATES = ["a photo of the number {}.", "a handwritten {}.", "the digit {}."]
DIGITS = {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}, "label_column": "label"}


def write_config(path: Path, out: Path, **train) -> Path:
    cfg = {
        "output_dir": str(out),
        "seed": 0,
        "model": {"embed_dim": 32, "modalities": copy.deepcopy(TINY_MODALITIES)},
        "data": {"train": {**DIGITS, "split": "train"}},
        "train": {
            "batch_size": 64,
            "steps": 40,
            "lr": 2e-3,
            "weight_decay": 0.0,
            "progress": False,
            "log_every": 10,
            **train,
        },
        "eval": {
            "data": {**DIGITS, "split": "test", "where": {"label": {"lt": 5}}},
            "zeroshot": {"templates": TEMPLATES},
            "retrieval": {"a": "image", "b": "text", "ks": [1, 5], "positives": "label"},
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_look_before_training_then_train_logs_and_evaluates_at_the_end(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run")
    assert main(["data", str(cfg)]) == 0
    shown = capsys.readouterr().out
    assert "data.train: 1437 rows from sklearn-digits split 'train'" in shown
    assert "classes (id: name count): 0: zero 142, 1: one 146" in shown
    assert "eval.data: 180 rows" in shown and "where {'label': {'lt': 5}}" in shown
    assert "loss terms: image <-> text: row i's 'image' with row i's 'caption'" in shown
    assert shown.count("  row ") == 6 and "'a photo of the number zero.'  (+7 more)" in shown
    assert main(["train", str(cfg), "--dry-run"]) == 0
    assert "data.train: 1437 rows" in capsys.readouterr().out and not (tmp_path / "run" / "checkpoints").exists()

    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "data.train: 1437 rows" in out.split("done:")[0]  # the look comes first
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "train/loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40]
    assert all(r["samples_per_s"] > 0 for r in steps) and np.all(np.diff([r["wall_s"] for r in steps]) > 0)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["datasets"][0]["classes"][3] == {"id": 3, "name": "three", "count": 146}
    report = json.loads((tmp_path / "run" / "eval" / "zeroshot.json").read_text())
    assert report["dataset"]["where"] == {"label": {"lt": 5}} and report["dataset"]["rows"] == 180
    assert report["dataset"]["split"] == "test" and report["model"]["step"] == 40
    retrieval = json.loads((tmp_path / "run" / "eval" / "retrieval.json").read_text())["metrics"]
    # 180 rows x 8 captions, but only 5 classes x 8 templates are distinct captions
    assert retrieval["n_b_items"] == 180 * 8 and retrieval["n_b"] == 40 and retrieval["deduplicated"]


def test_dedupe_matches_brute_force_on_the_distinct_items():
    from align.eval.retrieval import retrieval_metrics
    from align.eval.runner import dedupe_items

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 30)
    items = [f"class {lab} template {rng.integers(3)}" for lab in labels for _ in range(2)]
    source = np.repeat(np.arange(30), 2)
    pairs = np.nonzero(labels[:, None] == labels[source][None, :])
    unique, inverse, merged = dedupe_items(items, pairs)
    assert len(unique) == len(set(items)) and [unique[i] for i in inverse] == items
    # brute force: a distinct caption is a positive of image r when it names r's class
    expected = {(r, u) for r in range(30) for u, text in enumerate(unique) if text.startswith(f"class {labels[r]} ")}
    assert set(zip(*merged)) == expected
    a = rng.normal(size=(30, 8)).astype(np.float32)
    b = rng.normal(size=(len(unique), 8)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    import torch

    m = retrieval_metrics(torch.tensor(a), torch.tensor(b), np.stack(merged, 1), ks=[1, 2], names=("a", "b"))
    scores = a @ b.T
    assert m["a_to_b/R@1"] == pytest.approx(np.mean([(r, int(scores[r].argmax())) in expected for r in range(30)]))
    assert m["b_to_a/R@1"] == pytest.approx(
        np.mean([(int(scores[:, u].argmax()), u) in expected for u in range(len(unique))])
    )


def test_errors_are_one_line_with_a_traceback_only_with_debug(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", batch_size=5000)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("align: error: config key 'train.batch_size': 5000 is larger than data.train")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    few = write_config(tmp_path / "few.yaml", tmp_path / "run")
    data = yaml.safe_load(few.read_text())
    data["eval"]["zeroshot"]["classnames"] = ["zero", "one", "two", "three"]
    few.write_text(yaml.safe_dump(data))
    assert main(["data", str(few)]) == 2
    err = capsys.readouterr().err
    assert "config key 'eval.zeroshot.classnames'" in err and "missing ['four'" in err and "Traceback" not in err
    with pytest.raises(Exception, match="eval.zeroshot.classnames"):
        main(["data", str(few), "--debug"])
    # an unexpected failure is one line too, pointing at --debug
    assert main(
        [
            "index",
            "build",
            "--checkpoint",
            str(tmp_path / "nothing"),
            "--modality",
            "image",
            "--out",
            str(tmp_path / "idx"),
            "--data",
            "{source: sklearn-digits",
        ]
    ) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("align: ") and "Traceback" not in err


def test_hf_progress_bars_follow_train_progress(tmp_path, capfd):
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"caption {i},{'ab'[i % 2]}\n" for i in range(40)))
    for progress in (False, True):
        cfg = {
            "output_dir": str(tmp_path / "run"),
            "model": {
                "embed_dim": 32,
                "modalities": {
                    "text": copy.deepcopy(TINY_MODALITIES["text"]),
                    "image": copy.deepcopy(TINY_MODALITIES["image"]),
                },
            },
            "data": {
                "train": {
                    "source": "csv",
                    "data_files": str(csv),
                    "columns": {"text": "text"},
                    "label_column": "label",
                    "load_kwargs": {"cache_dir": str(tmp_path / f"hf-{progress}")},
                }
            },
            "train": {"progress": progress},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        capfd.readouterr()
        assert main(["data", str(tmp_path / "c.yaml")]) == 0
        captured = capfd.readouterr()
        assert ("Generating train split" in captured.err) == progress
        assert "classes (id: name count): 0: a 20, 1: b 20" in captured.out


def test_encode_raw_items(tmp_path):
    from align.config.schema import ModelConfig
    from align.data.sources.sklearn_digits import sklearn_digits
    from align.model.align_model import AlignModel

    model = AlignModel(ModelConfig(embed_dim=16, modalities=copy.deepcopy(TINY_MODALITIES))).eval()
    table = sklearn_digits("test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        table["image"][i].save(paths[-1])
    by_path = align.encode(model, "image", [str(p) for p in paths], batch_size=2)
    by_pil = align.encode(model, "image", [table["image"][i] for i in range(3)])
    assert by_path.shape == (3, 16) and np.allclose(by_path.norm(dim=1), 1, atol=1e-5)
    assert np.allclose(by_path, by_pil, atol=1e-5)
    pre = model.adapters["text"].preprocessor()
    batch = pre.collate([pre(t, train=False) for t in ["a handwritten seven.", "zero"]])
    assert np.allclose(
        align.encode(model, "text", ["a handwritten seven.", "zero"]), model.encode("text", batch).detach(), atol=1e-5
    )
    from align.errors import SampleError

    with pytest.raises(SampleError, match=r"image item 3 .*nope.png"):
        align.encode(model, "image", [str(p) for p in paths] + [str(tmp_path / "nope.png")], batch_size=2)
    with pytest.raises(KeyError, match="no modality 'audio'"):
        align.encode(model, "audio", ["x.wav"])
