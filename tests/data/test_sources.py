"""Builtin sources on the real shared data (FSDD file names, MNIST 5k pixel CSV), row filters,
label names, joining two tables by label, and skip-and-count for samples that fail to load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from align.config.dataset import DatasetSpec
from align.config.schema import config_from_dict
from align.data.tables import load_table
from align.errors import DataError
from tests.support.tiny import TINY_MODALITIES

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FSDD = DATA / "audio" / "fsdd" / "recordings"
MNIST = DATA / "image" / "mnist5k" / "mnist_5k.csv.gz"
FSDD_PATTERN = r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

pytestmark = pytest.mark.skipif(not FSDD.is_dir() or not MNIST.is_file(), reason="shared data missing")


def fsdd_spec(**kw) -> DatasetSpec:
    base = {
        "source": "files",
        "data_files": str(FSDD / "*.wav"),
        "columns": {"audio": "path"},
        "label_column": "label",
        "load_kwargs": {"pattern": FSDD_PATTERN},
    }
    return DatasetSpec.model_validate({**base, **kw})


def test_files_source_parses_fsdd_names_and_filters_the_official_split():
    table = load_table(fsdd_spec())
    assert len(table) == 3000
    assert set(table.column_names) == {"path", "label", "speaker", "take"}
    assert sorted(set(table["speaker"])) == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    row = table[0]
    assert Path(row["path"]).name == f"{row['label']}_{row['speaker']}_{row['take']}.wav"
    test = load_table(fsdd_spec(where={"take": {"lt": 5}}))
    train = load_table(fsdd_spec(where={"take": {"ge": 5}}))
    # the official split (takes 0-4 = 10%; shared/data's README says 600, but 6 x 10 x 5 = 300)
    assert len(test) == 300 and len(train) == 2700
    assert set(test["path"]).isdisjoint(train["path"])
    assert np.bincount(test["label"]).tolist() == [30] * 10
    held_out = load_table(fsdd_spec(where={"speaker": {"eq": "theo"}}))
    others = load_table(fsdd_spec(where={"speaker": {"not_in": ["theo"]}}))
    assert len(held_out) == 500 and len(others) == 2500 and set(held_out["speaker"]) == {"theo"}
    both = load_table(fsdd_spec(where={"speaker": {"in": ["theo", "george"]}, "take": {"ge": 10, "lt": 12}}))
    assert len(both) == 2 * 10 * 2


def test_label_names_make_captions_from_class_names():
    table = load_table(
        fsdd_spec(
            where={"take": {"eq": 0}},
            label_names=DIGITS,
            caption_templates=["a person saying the number {}", "someone says {}"],
        )
    )
    assert table.features["label"].names == DIGITS
    for row in table:
        assert DIGITS[row["label"]] in row["label_captions"][0]


def test_filter_and_name_errors_name_the_key():
    with pytest.raises(DataError, match=r"data.train.where.speakr.*not in the dataset"):
        load_table(fsdd_spec(where={"speakr": {"eq": "theo"}}))
    with pytest.raises(DataError, match=r"data.train.where.*no rows"):
        load_table(fsdd_spec(where={"take": {"gt": 99}}))
    with pytest.raises(DataError, match=r"label_names.*0..2"):
        load_table(fsdd_spec(label_names=["a", "b", "c"]))
    with pytest.raises(DataError, match="does not match load_kwargs.pattern"):
        load_table(fsdd_spec(load_kwargs={"pattern": r"^(?P<label>\d)_theo_"}))
    assert len(load_table(fsdd_spec(load_kwargs={"pattern": r"^(?P<label>\d)_theo_", "skip_unmatched": True}))) == 500
    with pytest.raises(DataError, match="no files match"):
        load_table(fsdd_spec(data_files=str(FSDD / "*.flac")))
    with pytest.raises(DataError, match=r"unknown load_kwargs \['patern'\]"):
        load_table(fsdd_spec(load_kwargs={"patern": "x"}))


def test_pixel_csv_reads_mnist5k_with_a_fixed_stratified_split():
    spec = {"source": "pixel-csv", "data_files": str(MNIST), "columns": {"image": "image"}, "label_column": "label"}
    train = load_table(DatasetSpec.model_validate({**spec, "split": "train"}))
    test = load_table(DatasetSpec.model_validate({**spec, "split": "test"}))
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test["label"]).tolist() == [100] * 10
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(test[0]["image"]["bytes"]))
    assert img.size == (28, 28)
    raw = np.loadtxt(MNIST, delimiter=",", dtype=np.int64)  # the first test row is a real MNIST row
    flat = np.asarray(img).reshape(-1)
    match = np.nonzero((raw[:, :-1] == flat).all(1))[0]
    assert len(match) >= 1 and raw[match[0], -1] == test[0]["label"]
    assert (
        test[0]["caption"][0].endswith(DIGITS[test[0]["label"]] + ".")
        or DIGITS[test[0]["label"]] in test[0]["caption"][0]
    )
    with pytest.raises(DataError, match="expected 63 pixel columns"):
        load_table(DatasetSpec.model_validate({**spec, "load_kwargs": {"shape": [9, 7]}}))


def test_join_pairs_each_recording_with_an_mnist_digit_of_its_class():
    mnist = {
        "source": "pixel-csv",
        "data_files": str(MNIST),
        "split": "test",
        "label_column": "label",
        "columns": {"image": "image"},
    }
    spec = fsdd_spec(
        where={"take": {"lt": 5}}, columns={"audio": "path", "image": "image"}, join={"data": mnist, "by": "label"}
    )
    table = load_table(spec)
    assert len(table) == 300 and "image" in table.column_names
    images = load_table(DatasetSpec.model_validate(mnist))
    by_bytes = {img["bytes"]: lab for img, lab in zip(images["image"], images["label"])}
    got = [by_bytes[img["bytes"]] for img in table["image"]]
    assert got == table["label"]  # every pair shares its digit
    # 30 recordings per class, 100 images per class: no image used twice
    assert len({img["bytes"] for img in table["image"]}) == 300
    assert load_table(spec)["image"] == table["image"]  # fixed pairing
    other = load_table(
        fsdd_spec(
            where={"take": {"lt": 5}},
            columns={"audio": "path", "image": "image"},
            join={"data": mnist, "by": "label", "seed": 1},
        )
    )
    assert other["image"] != table["image"]
    with pytest.raises(DataError, match=r"data.train.join.by.*'digit'"):
        load_table(fsdd_spec(columns={"audio": "path", "image": "image"}, join={"data": mnist, "by": "digit"}))
    with pytest.raises(DataError, match=r"already exist"):
        load_table(
            fsdd_spec(columns={"audio": "path"}, join={"data": {**mnist, "columns": {"path": "image"}}, "by": "label"})
        )


TINY = {"embed_dim": 16, "modalities": TINY_MODALITIES}


@pytest.fixture(scope="module")
def images_with_a_corrupt_one(tmp_path_factory):
    """25 real MNIST digits as PNG files; row 5 is a corrupt file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("skip")
    images, labels = np.loadtxt(MNIST, delimiter=",", dtype=np.uint8, max_rows=2000)[::80, :-1], None
    labels = np.loadtxt(MNIST, delimiter=",", dtype=np.int64, max_rows=2000)[::80, -1]
    rows = []
    for i, (px, lab) in enumerate(zip(images, labels)):
        path = root / f"{i}.png"
        if i == 5:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
        else:
            Image.fromarray(px.reshape(28, 28)).save(path)
        rows.append({"file": str(path), "caption": f"the digit {DIGITS[lab]}", "label": int(lab)})
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _skip_config(root: Path, out: Path, on_error: str) -> dict:
    spec = {
        "source": "json",
        "data_files": str(root / "rows.jsonl"),
        "columns": {"image": "file", "text": "caption"},
        "label_column": "label",
        "on_error": on_error,
        "load_kwargs": {"cache_dir": str(out / "hf")},
    }
    return {
        "output_dir": str(out),
        "model": copy.deepcopy(TINY),
        "data": {"train": spec},
        "train": {"batch_size": 8, "steps": 6, "progress": False, "log_every": 3},
        "eval": {
            "data": spec,
            "zeroshot": {"query": "image", "classnames": DIGITS, "templates": ["the digit {}"]},
            "retrieval": {"a": "image", "b": "text", "ks": [1]},
        },
    }


def test_corrupt_file_raises_naming_the_file_by_default(images_with_a_corrupt_one, tmp_path):
    from align.app.trainer import train
    from align.errors import SampleError

    cfg = config_from_dict(_skip_config(images_with_a_corrupt_one, tmp_path, "raise"))
    with pytest.raises(SampleError, match=r"row 5, column 'file' \(image\).*5\.png"):
        train(cfg)


def test_skip_and_count_in_training_and_evaluation(images_with_a_corrupt_one, tmp_path, caplog):
    from align.app.trainer import train
    from align.eval.runner import evaluate

    cfg = config_from_dict(_skip_config(images_with_a_corrupt_one, tmp_path, "skip"))
    with caplog.at_level("WARNING", logger="align.data.tables"):
        result = train(cfg)
    # 25 rows, batch 8: 3 steps an epoch, 6 steps = 2 epochs, each visiting row 5 (with this seed)
    assert result.skipped == 2
    assert "5.png" in caplog.text
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logged[-1]["data/skipped"] == 2
    metrics = evaluate(result.model, cfg.eval)
    assert metrics["dataset"]["skipped"] == 1 and metrics["dataset"]["evaluated"] == 24
    assert metrics["dataset"]["skipped_rows"] == [5]
    assert np.asarray(metrics["zeroshot"]["confusion_matrix"]).sum() == 24
    assert metrics["retrieval"]["n_a"] == 24 and metrics["retrieval"]["n_b_items"] == 24


def test_saved_config_reloads_filters_and_joins(tmp_path):
    """A run's saved config.yaml must reload to the same filters (``in`` is an alias)."""
    from align.config.schema import dump_config, load_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(
        repo / "configs" / "fsdd-mnist-audio-image.yaml",
        ["data.train.where={speaker: {in: [theo, lucas]}, take: {ge: 5}}"],
    )
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.data.train.where == cfg.data.train.where
    assert again.data.train.where["speaker"].tests() == {"in_": ["theo", "lucas"]}
    assert again.data.train.join == cfg.data.train.join and again.eval == cfg.eval
