"""A user's own data at first contact: class names matched by name, string labels, splits and
k-fold for any source, labels from a path component, honest reports, a look before training, one
clear error line, de-duplicated templated retrieval, ``align.encode`` on raw items.

One tiny image<->text model is trained once on scikit-learn's real digits (train split) and then
evaluated on the held-out digits laid out the ways users lay out data: an imagefolder (whose class
order is alphabetical: eight, five, four, nine, one, ...), a CSV of PNG paths with string labels.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from align.config.dataset import DatasetSpec
from align.config.schema import EvalConfig, config_from_dict
from align.data.sources.common import DIGIT_NAMES
from align.data.sources.sklearn_digits import sklearn_digits
from align.data.tables import load_table
from align.errors import ConfigError, DataError
from tests.support.tiny import TINY_MODALITIES  # tests/ is on sys.path (no __init__.py)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FSDD = DATA / "audio" / "fsdd" / "recordings"
TEMPLATES = ["a photo of the number {}.", "a handwritten {}.", "the digit {}."]
DIGITS_TRAIN = {
    "source": "sklearn-digits",
    "split": "train",
    "columns": {"image": "image", "text": "caption"},
    "label_column": "label",
}


def digits_config(out: Path, **train) -> dict:
    return {
        "output_dir": str(out),
        "seed": 0,
        "model": {"embed_dim": 32, "modalities": copy.deepcopy(TINY_MODALITIES)},
        "data": {"train": dict(DIGITS_TRAIN)},
        "train": {
            "batch_size": 64,
            "steps": 150,
            "lr": 2e-3,
            "weight_decay": 0.0,
            "warmup_steps": 10,
            "progress": False,
            "log_every": 25,
            **train,
        },
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on the digits' train split (no eval section: nothing to leak)."""
    from align.app.trainer import train

    out = tmp_path_factory.mktemp("digits-run")
    return train(config_from_dict(digits_config(out))).model


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """The held-out digits as PNG files: an imagefolder (folder per class name) and a CSV of paths
    with string labels."""
    root = tmp_path_factory.mktemp("digit-files")
    table = sklearn_digits("test")
    rows = []
    for i, (img, lab) in enumerate(zip(table["image"], table["label"])):
        name = DIGIT_NAMES[lab]
        (root / "folder" / name).mkdir(parents=True, exist_ok=True)
        path = root / "folder" / name / f"{i:04d}.png"
        img.save(path)
        rows.append({"path": str(path), "digit": name, "writer": f"w{i % 12}"})
    with open(root / "digits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "digit", "writer"])
        w.writeheader()
        w.writerows(rows)
    return root


def zeroshot_top1(model, data: dict, classnames=None, **extra) -> dict:
    from align.eval.runner import evaluate

    zs = {"classnames": classnames, "templates": TEMPLATES} if classnames is not None else {"templates": TEMPLATES}
    return evaluate(model, EvalConfig.model_validate({"data": data, "zeroshot": zs, **extra}))


def test_class_names_are_matched_by_name_not_position(trained, digit_files, tmp_path):
    builtin = zeroshot_top1(trained, {**DIGITS_TRAIN, "split": "test"}, DIGIT_NAMES)["zeroshot"]["top1"]
    assert builtin > 0.3  # it learned (chance 0.10)
    folder = {
        "source": "imagefolder",
        "data_dir": str(digit_files / "folder"),
        "columns": {"image": "image"},
        "label_column": "label",
        "load_kwargs": {"cache_dir": str(tmp_path / "hf")},
    }
    table = load_table(DatasetSpec.model_validate(folder))
    assert table.features["label"].names == sorted(DIGIT_NAMES)  # imagefolder's alphabetical order
    # the list in numeric order is matched to the folders by name: same images, same accuracy
    by_name = zeroshot_top1(trained, folder, DIGIT_NAMES)
    assert by_name["zeroshot"]["top1"] == pytest.approx(builtin)
    assert by_name["zeroshot"]["classnames"] == sorted(DIGIT_NAMES)
    assert by_name["dataset"]["classes"] == sorted(DIGIT_NAMES)
    # no list: the data's names; a dict renames them for the prompts
    assert zeroshot_top1(trained, folder)["zeroshot"]["top1"] == pytest.approx(builtin)
    upper = {n: n.upper() for n in reversed(DIGIT_NAMES)}
    renamed = zeroshot_top1(trained, folder, upper)["zeroshot"]
    assert renamed["classnames"] == [n.upper() for n in sorted(DIGIT_NAMES)]
    # a name the data does not have is an error listing both, before anything is encoded
    with pytest.raises(ConfigError, match=r"eval.zeroshot.classnames.*'nine'.*missing \['eight'\].*'ate'"):
        zeroshot_top1(trained, folder, [n if n != "eight" else "ate" for n in DIGIT_NAMES])


def test_string_labels_become_class_ids_with_the_mapping_reported(trained, digit_files):
    builtin = zeroshot_top1(trained, {**DIGITS_TRAIN, "split": "test"}, DIGIT_NAMES)["zeroshot"]["top1"]
    spec = {
        "source": "csv",
        "data_files": str(digit_files / "digits.csv"),
        "columns": {"image": "path"},
        "label_column": "digit",
    }
    got = zeroshot_top1(trained, spec)
    assert got["dataset"]["classes"] == sorted(DIGIT_NAMES) and got["zeroshot"]["top1"] == pytest.approx(builtin)
    # label_names gives the id order of string labels; an unknown string names its row
    import pandas as pd

    raw = pd.read_csv(digit_files / "digits.csv")["digit"].tolist()
    ordered = load_table(DatasetSpec.model_validate({**spec, "label_names": DIGIT_NAMES}))
    assert ordered.features["digit"].names == DIGIT_NAMES and [DIGIT_NAMES[i] for i in list(ordered["digit"])] == raw
    with pytest.raises(DataError, match=r"label_names.*\['eight'\] \(first in row \d+\)"):
        load_table(DatasetSpec.model_validate({**spec, "label_names": [n for n in DIGIT_NAMES if n != "eight"]}))
    # bare integer ids with too few class names: the key is named before anything is encoded
    frame = pd.read_csv(digit_files / "digits.csv")
    frame["label_id"] = frame["digit"].map(DIGIT_NAMES.index)
    frame.to_csv(digit_files / "digits-int.csv", index=False)
    ints = {
        "source": "csv",
        "data_files": str(digit_files / "digits-int.csv"),
        "columns": {"image": "path"},
        "label_column": "label_id",
    }
    with pytest.raises(ConfigError, match=r"eval.zeroshot.classnames': 9 class names.*run 0..9"):
        zeroshot_top1(trained, ints, DIGIT_NAMES[:9])
    assert zeroshot_top1(trained, ints, DIGIT_NAMES)["zeroshot"]["top1"] == pytest.approx(builtin)


def test_holdout_splits_any_source_stratified_and_by_group(digit_files):
    base = {
        "source": "csv",
        "data_files": str(digit_files / "digits.csv"),
        "columns": {"image": "path"},
        "label_column": "digit",
    }

    def rows(**holdout):
        t = load_table(DatasetSpec.model_validate({**base, "holdout": holdout}))
        return {c: list(t[c]) for c in t.column_names}

    train, test = rows(take="train", seed=1), rows(take="test", seed=1)
    assert len(train["path"]) + len(test["path"]) == 360 and not set(train["path"]) & set(test["path"])
    assert len(test["path"]) == 72 and np.bincount(test["digit"]).min() >= 7  # ~20% of every class
    assert rows(take="test", seed=1)["path"] == test["path"] and rows(take="test", seed=2)["path"] != test["path"]
    grouped_train, grouped_test = rows(take="train", group="writer"), rows(take="test", group="writer")
    assert not set(grouped_train["writer"]) & set(grouped_test["writer"])
    folds = [rows(take="test", folds=3, fold=k, group="writer")["path"] for k in range(3)]
    assert sorted(sum(folds, [])) == sorted(train["path"] + test["path"])  # every row tested once
    with pytest.raises(DataError, match=r"data.train.holdout.group': column 'speaker'"):
        rows(take="test", group="speaker")


def test_labels_from_a_folder_in_the_path(tmp_path):
    if not FSDD.is_dir():
        pytest.skip("shared data missing")
    for wav in sorted(FSDD.glob("*_jackson_[0-3].wav")):  # <digit word>/<speaker>_<take>.wav
        digit, speaker, take = wav.stem.split("_")
        (tmp_path / "words" / DIGIT_NAMES[int(digit)]).mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, tmp_path / "words" / DIGIT_NAMES[int(digit)] / f"{speaker}_{take}.wav")
    spec = {
        "source": "files",
        "data_files": str(tmp_path / "words" / "*" / "*.wav"),
        "load_kwargs": {"pattern": r"(?P<word>[a-z]+)/(?P<speaker>[a-z]+)_\d+\.wav$", "match": "path"},
        "columns": {"audio": "path"},
        "label_column": "word",
    }
    table = load_table(DatasetSpec.model_validate(spec))
    assert len(table) == 40 and table.features["word"].names == sorted(DIGIT_NAMES)
    assert all(Path(p).parent.name == sorted(DIGIT_NAMES)[w] for p, w in zip(list(table["path"]), list(table["word"])))
    with pytest.raises(DataError, match="searched in its name"):
        load_table(DatasetSpec.model_validate({**spec, "load_kwargs": {**spec["load_kwargs"], "match": "name"}}))


def test_crossval_on_a_csv_source(digit_files, tmp_path, capsys):
    """``align crossval`` on a plain csv: the holdout section gives the folds, the reports say which."""
    import yaml

    from align.app.crossval import run_crossval

    spec = {
        "source": "csv",
        "data_files": str(digit_files / "digits.csv"),
        "columns": {"image": "path", "text": "label_captions"},
        "label_column": "digit",
        "caption_templates": TEMPLATES,
        "holdout": {"take": "train", "folds": 2},
    }
    cfg = digits_config(tmp_path / "cv", steps=3, batch_size=32, log_every=1)
    cfg["data"]["train"] = spec
    cfg["eval"] = {"data": {**spec, "holdout": {"take": "test", "folds": 2}}, "zeroshot": {"templates": TEMPLATES}}
    (tmp_path / "cv.yaml").write_text(yaml.safe_dump(cfg))
    report = run_crossval(tmp_path / "cv.yaml")
    assert [f["fold"] for f in report["per_fold"]] == [0, 1] and sum(f["n_test"] for f in report["per_fold"]) == 360
    ev = json.loads((tmp_path / "cv" / "fold1" / "eval" / "zeroshot.json").read_text())
    assert ev["dataset"]["holdout"]["take"] == "test" and ev["dataset"]["fold"] == 1 and ev["dataset"]["rows"] == 180
    # the console says these are held-out test rows, not rows of split 'train'
    assert "eval (csv split 'train', holdout test (fold 1 of 2, seed 0), 180 rows)" in capsys.readouterr().out
    from align.training.runlock import RunLock, RunLockedError

    with RunLock(tmp_path / "cv"):  # another cross-validation writing this root's crossval.json
        with pytest.raises(RunLockedError, match="is in use by another run"):
            run_crossval(tmp_path / "cv.yaml")
    assert not list((tmp_path / "cv").glob(".crossval.json.*"))  # written whole (a temp file, renamed)
    del cfg["eval"]["data"]["holdout"]  # evaluating on every row would test on training rows
    (tmp_path / "cv.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"eval.data.holdout': cross-validation on source 'csv' needs"):
        run_crossval(tmp_path / "cv.yaml")


def test_the_look_warns_when_eval_classes_differ_from_training(digit_files, tmp_path, capsys):
    import yaml

    from align.app.cli import main

    spec = {
        "source": "csv",
        "data_files": str(digit_files / "digits.csv"),
        "columns": {"image": "path", "text": "label_captions"},
        "label_column": "digit",
        "caption_templates": TEMPLATES,
    }
    cfg = digits_config(tmp_path / "run")
    cfg["data"]["train"] = {**spec, "holdout": {"take": "train"}}
    cfg["eval"] = {
        "data": {**spec, "holdout": {"take": "test"}, "where": {"digit": {"ne": "eight"}}},
        "zeroshot": {"templates": TEMPLATES},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["data", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "warning: eval.data has classes ['five', 'four', 'nine'" in out and "class ids differ" in out
    assert "zero-shot prompts name the classes, in id order: five, four, nine, one, seven, six, three, two, zero" in out
