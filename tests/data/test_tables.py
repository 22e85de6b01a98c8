"""Data: the builtin sklearn-digits split, loading local tables (imagefolder, csv, json lines) with
config-key error messages, and PairedDataset / Collator on real images."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from align.config.dataset import DatasetSpec
from align.data.sources.common import DIGIT_NAMES
from align.data.sources.sklearn_digits import sklearn_digits
from align.data.tables import Collator, PairedDataset, load_table
from align.errors import DataError, SampleError
from align.modalities import build_adapter

# ../shared/data beside the checkout (CI has it too)
MNIST5K = Path(__file__).resolve().parents[3] / "shared" / "data" / "image" / "mnist5k" / "mnist_5k.csv.gz"
TINY_VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


# --------------------------------------------------------------------------------------------
# builtin sklearn-digits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_splits():
    return {s: sklearn_digits(s) for s in ("train", "test")}


def _key(pil_image, label):
    return np.asarray(pil_image).tobytes(), int(label)


def test_sklearn_digits_sizes_labels_and_partition(digit_splits):
    from sklearn.datasets import load_digits

    train, test = digit_splits["train"], digit_splits["test"]
    assert (len(train), len(test)) == (1437, 360)
    assert train.features["label"].names == DIGIT_NAMES
    for ds in (train, test):
        counts = collections.Counter(ds["label"])
        assert sorted(counts) == list(range(10))
    # stratified: every class is ~20% test
    test_counts = collections.Counter(test["label"])
    full = collections.Counter(load_digits().target.tolist())
    for c in range(10):
        assert abs(test_counts[c] / full[c] - 0.2) < 0.02

    # train + test is exactly the scikit-learn set (as a multiset of (pixels, label)), so the two
    # splits are disjoint and cover everything
    digits = load_digits()
    ref = collections.Counter(
        ((img * 255.0 / 16.0).round().astype(np.uint8).tobytes(), int(t))
        for img, t in zip(digits.images, digits.target)
    )
    got = collections.Counter(_key(im, lab) for ds in (train, test) for im, lab in zip(ds["image"], ds["label"]))
    assert got == ref
    train_keys = {_key(im, lab) for im, lab in zip(train["image"], train["label"])}
    test_keys = {_key(im, lab) for im, lab in zip(test["image"], test["label"])}
    dup = {k for k, n in ref.items() if n > 1}  # identical scans, if any, may sit on both sides
    assert not (train_keys & test_keys) - dup
    # deterministic
    again = sklearn_digits("test")
    assert again["label"] == test["label"]


def test_sklearn_digits_images_and_captions(digit_splits):
    ds = digit_splits["test"]
    img = ds[0]["image"]
    assert img.size == (8, 8)
    names = "|".join(DIGIT_NAMES)
    for row in ds.select(range(60)):
        caps = row["caption"]
        assert len(caps) == 8 and len(set(caps)) == 8
        name = DIGIT_NAMES[row["label"]]
        for cap in caps:
            assert re.findall(rf"\b({names})\b", cap) == [name], cap
    # captions are rotated per row, so the first caption varies
    assert len({row["caption"][0] for row in ds.select(range(60))}) > 1


def test_sklearn_digits_bad_split():
    with pytest.raises(DataError, match="validation"):
        sklearn_digits("validation")
    spec = DatasetSpec(source="sklearn-digits", split="validation", columns={"image": "image"})
    with pytest.raises(DataError, match=r"data\.val' \(source 'sklearn-digits'\): .* not 'validation'"):
        load_table(spec, "data.val")


# --------------------------------------------------------------------------------------------
# local tables
# --------------------------------------------------------------------------------------------


def _digit_arrays(n_per_class: int = 1) -> list[tuple[np.ndarray, int]]:
    """Real handwritten digits, one (or more) per class: MNIST 28x28 from the shared copy when
    present, else scikit-learn's 8x8 scans."""
    out: list[tuple[np.ndarray, int]] = []
    if MNIST5K.is_file():
        seen: collections.Counter = collections.Counter()
        with gzip.open(MNIST5K, "rt") as f:
            for line in f:
                vals = np.array(line.split(","), dtype=float)
                label = int(vals[-1])
                if seen[label] < n_per_class:
                    seen[label] += 1
                    out.append((vals[:-1].reshape(28, 28).astype(np.uint8), label))
                if len(out) == 10 * n_per_class:
                    break
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        seen = collections.Counter()
        for img, t in zip(d.images, d.target):
            if seen[int(t)] < n_per_class:
                seen[int(t)] += 1
                out.append(((img * 255.0 / 16.0).round().astype(np.uint8), int(t)))
    assert sorted({lab for _, lab in out}) == list(range(10))
    return out


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """An imagefolder tree (root/train/<label>/<i>.png), plus csv and json-lines tables that
    point at the same PNGs by absolute path."""
    from PIL import Image

    root = tmp_path_factory.mktemp("digits")
    rows = []
    for i, (arr, label) in enumerate(_digit_arrays()):
        path = root / "folder" / "train" / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="L").save(path)
        rows.append({"file": str(path), "caption": f"a handwritten {DIGIT_NAMES[label]}.", "label": label})
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "caption", "label"])
        w.writeheader()
        w.writerows(rows)
    with open(root / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"img": r["file"], "text": r["caption"], "digit": r["label"]}) + "\n")
    return {"root": root, "rows": rows}


def _spec(tmp_path, **kw) -> DatasetSpec:
    kw.setdefault("load_kwargs", {"cache_dir": str(tmp_path / "hf_cache")})  # no shared cache
    return DatasetSpec(**kw)


def test_load_imagefolder(digit_files, tmp_path):
    spec = _spec(
        tmp_path,
        source="imagefolder",
        data_dir=str(digit_files["root"] / "folder"),
        columns={"image": "image"},
        label_column="label",
    )
    ds = load_table(spec)
    assert len(ds) == 10
    assert ds.features["label"].names == [str(d) for d in range(10)]
    # media columns come back undecoded and decode to the picture that was written
    from align.modalities.image import load_image

    for row in ds:
        raw = row["image"]
        assert isinstance(raw, dict) and raw["path"]
        folder_label = int(Path(raw["path"]).parent.name)
        assert ds.features["label"].int2str(row["label"]) == str(folder_label)
        src = next(r for r in digit_files["rows"] if Path(r["file"]).samefile(raw["path"]))
        from PIL import Image

        expected = np.asarray(Image.open(src["file"]).convert("RGB"))
        assert np.array_equal(np.asarray(load_image(raw)), expected)


def test_load_csv_and_json_lines(digit_files, tmp_path):
    rows = digit_files["rows"]
    ds = load_table(
        _spec(
            tmp_path,
            source="csv",
            data_files=str(digit_files["root"] / "pairs.csv"),
            columns={"image": "file", "text": "caption"},
            label_column="label",
        )
    )
    assert ds["file"] == [r["file"] for r in rows]
    assert ds["caption"] == [r["caption"] for r in rows]
    assert ds["label"] == [r["label"] for r in rows]

    ds = load_table(
        _spec(
            tmp_path,
            source="json",
            data_files=str(digit_files["root"] / "pairs.jsonl"),
            columns={"image": "img", "text": "text"},
            label_column="digit",
        )
    )
    assert ds["img"] == [r["file"] for r in rows]
    assert ds["text"] == [r["caption"] for r in rows]


def test_max_samples(digit_files, tmp_path):
    spec = _spec(
        tmp_path,
        source="csv",
        data_files=str(digit_files["root"] / "pairs.csv"),
        columns={"image": "file"},
        max_samples=3,
    )
    ds = load_table(spec)
    assert ds["file"] == [r["file"] for r in digit_files["rows"][:3]]
    big = _spec(
        tmp_path,
        source="csv",
        data_files=str(digit_files["root"] / "pairs.csv"),
        columns={"image": "file"},
        max_samples=1000,
    )
    assert len(load_table(big)) == 10
    digits = load_table(DatasetSpec(source="sklearn-digits", split="test", columns={"image": "image"}, max_samples=5))
    assert len(digits) == 5


def test_missing_column_names_key_column_and_available(digit_files, tmp_path):
    csv_file = str(digit_files["root"] / "pairs.csv")
    spec = _spec(tmp_path, source="csv", data_files=csv_file, columns={"image": "file", "text": "captoin"})
    with pytest.raises(DataError) as info:
        load_table(spec, "data.val")
    msg = str(info.value)
    assert "data.val.columns.text" in msg and "'captoin'" in msg
    for col in ("file", "caption", "label"):
        assert col in msg

    spec = _spec(tmp_path, source="csv", data_files=csv_file, columns={"image": "file"}, label_column="digit")
    with pytest.raises(DataError, match=r"data\.train\.label_column.*'digit'"):
        load_table(spec)

    spec = _spec(tmp_path, source="imagefolder", data_dir=str(digit_files["root"] / "folder"), columns={"image": "img"})
    with pytest.raises(DataError, match=r"eval\.data\.columns\.image.*'img'.*\['image', 'label'\]"):
        load_table(spec, "eval.data")


def test_missing_files_name_the_key(tmp_path):
    missing_csv = tmp_path / "nope.csv"
    with pytest.raises(DataError) as info:
        load_table(_spec(tmp_path, source="csv", data_files=str(missing_csv), columns={"image": "file"}))
    msg = str(info.value)
    assert "config key 'data.train." in msg and "data_files" in msg and "nope.csv" in msg

    bad_dir = tmp_path / "no_such_dir"
    with pytest.raises(DataError) as info:
        load_table(_spec(tmp_path, source="imagefolder", data_dir=str(bad_dir), columns={"image": "image"}), "data.val")
    msg = str(info.value)
    assert "config key 'data.val." in msg and "no_such_dir" in msg

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match=r"config key 'data\.train\."):
        load_table(_spec(tmp_path, source="imagefolder", data_dir=str(empty), columns={"image": "image"}))


# --------------------------------------------------------------------------------------------
# PairedDataset + Collator
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preprocessors():
    image = build_adapter("image", {"vision_cfg": TINY_VISION, "output_dim": 16})
    text = build_adapter("text", {"text_cfg": TINY_TEXT, "output_dim": 16})
    return {"image": image.preprocessor(), "text": text.preprocessor()}


def test_paired_dataset_bad_image_names_row_column_and_path(digit_files, tmp_path, preprocessors):
    rows = [dict(r) for r in digit_files["rows"][:4]]
    missing = tmp_path / "gone" / "missing.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all" * 10)
    rows[1]["file"] = str(missing)
    rows[3]["file"] = str(corrupt)
    table_file = tmp_path / "bad.csv"
    with open(table_file, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "caption", "label"])
        w.writeheader()
        w.writerows(rows)
    table = load_table(
        _spec(tmp_path, source="csv", data_files=str(table_file), columns={"image": "file", "text": "caption"})
    )
    for train in (False, True):
        ds = PairedDataset(
            table, {"image": "file", "text": "caption"}, preprocessors, train=train, name="data.train (csv)"
        )
        assert ds[0]["image"].shape == (3, 32, 32)
        for i, path in ((1, missing), (3, corrupt)):
            with pytest.raises(SampleError) as info:
                ds[i]
            msg = str(info.value)
            assert f"row {i}" in msg and "'file'" in msg and str(path) in msg and "data.train (csv)" in msg
        assert ds[2]["text"] == rows[2]["caption"]


def test_paired_dataset_bad_text_names_row(tmp_path, preprocessors):
    import datasets

    table = datasets.Dataset.from_dict({"caption": ["fine", None, "also fine"]})
    ds = PairedDataset(table, {"text": "caption"}, preprocessors, train=False)
    assert ds[2]["text"] == "also fine"
    with pytest.raises(SampleError, match=r"row 1, column 'caption'"):
        ds[1]


def test_collator_batches_image_and_text(digit_files, tmp_path, preprocessors):
    import open_clip

    table = load_table(
        _spec(
            tmp_path,
            source="csv",
            data_files=str(digit_files["root"] / "pairs.csv"),
            columns={"image": "file", "text": "caption"},
            label_column="label",
        )
    )
    ds = PairedDataset(table, {"image": "file", "text": "caption"}, preprocessors, train=False, label_column="label")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, collate_fn=Collator(preprocessors))
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
    b = batches[0]
    assert set(b) == {"index", "image", "text", "label", "skipped"} and b["skipped"] == 0
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["text"].shape == (4, TINY_TEXT["context_length"]) and b["text"].dtype == torch.long
    assert b["index"].tolist() == [0, 1, 2, 3]
    rows = digit_files["rows"]
    assert b["label"].tolist() == [r["label"] for r in rows[:4]]
    # contents: the same tensors the preprocessors give for each row's own file and caption
    for j in range(4):
        torch.testing.assert_close(b["image"][j], preprocessors["image"](rows[j]["file"], train=False))
    tok = open_clip.SimpleTokenizer(context_length=TINY_TEXT["context_length"])
    assert torch.equal(b["text"], tok([r["caption"] for r in rows[:4]]))
    # different captions tokenize differently
    assert not torch.equal(b["text"][0], b["text"][1])


def test_collator_on_sklearn_digits_table(preprocessors):
    spec = DatasetSpec(
        source="sklearn-digits",
        split="test",
        columns={"image": "image", "text": "caption"},
        label_column="label",
        max_samples=6,
    )
    table = load_table(spec, "eval.data")
    assert isinstance(table[0]["image"], dict)  # undecoded: our preprocessor decodes (and names errors)
    ds = PairedDataset(table, spec.columns, preprocessors, train=True, label_column="label")
    batch = Collator(preprocessors)([ds[i] for i in range(6)])
    assert batch["image"].shape == (6, 3, 32, 32)
    assert batch["text"].shape == (6, TINY_TEXT["context_length"])
    assert batch["label"].tolist() == table["label"]
    for i in range(6):  # the drawn caption is one of the row's own captions
        assert ds[i]["text"] in table[i]["caption"]


def test_imagefolder_captions_from_label_names(digit_files, tmp_path):
    """An imagefolder has images and folder labels only; caption_templates turns the class names
    into a text column so it can be trained image<->text."""
    spec = _spec(
        tmp_path,
        source="imagefolder",
        data_dir=str(digit_files["root"] / "folder"),
        columns={"image": "image", "text": "label_captions"},
        label_column="label",
        caption_templates=["a photo of the number {}.", "a handwritten {}."],
    )
    ds = load_table(spec)
    names = ds.features["label"].names
    for row in ds:
        name = names[row["label"]]
        assert sorted(row["label_captions"]) == sorted([f"a photo of the number {name}.", f"a handwritten {name}."])
    text = build_adapter("text", {"text_cfg": TINY_TEXT, "output_dim": 32})
    image = build_adapter("image", {"vision_cfg": TINY_VISION, "output_dim": 32})
    pre = {"image": image.preprocessor(), "text": text.preprocessor()}
    item = PairedDataset(ds, spec.columns, pre, train=False)[0]
    assert item["text"] == ds[0]["label_captions"][0]


def test_caption_templates_need_a_label_column():
    from align.config.schema import config_from_dict
    from align.errors import ConfigError

    data = {
        "model": {"modalities": {"text": {"options": {"text_cfg": TINY_TEXT}}}},
        "data": {
            "train": {"source": "imagefolder", "columns": {"text": "label_captions"}, "caption_templates": ["a {}"]}
        },
    }
    with pytest.raises(ConfigError, match="data.train"):
        config_from_dict(data)


def test_empty_table_is_a_clear_error(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("image,caption\n")
    with pytest.raises(DataError, match="empty"):
        load_table(_spec(tmp_path, source="csv", data_files=str(csv), columns={"image": "image"}))
