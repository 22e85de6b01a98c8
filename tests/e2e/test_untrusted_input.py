"""Files this toolkit reads must not run code, and bad samples are named (or skipped) instead of
killing a run: pickles planted in every cache a source could use, a decompression bomb built here,
empty captions. Real data: TU MUTAG, CiteSeer, scikit-learn's digits."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from align.config.dataset import DatasetSpec
from align.data.tables import PairedDataset, load_table
from align.errors import DataError, SampleError
from align.modalities import build_adapter

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TU = DATA / "graph" / "tu"
CITESEER = DATA / "graph" / "citeseer"


class Payload:
    """Unpickling this creates ``marker``: proof that a file executed code when it was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant(folder: Path, names: list[str], marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.save(Payload(marker), folder / name)


@pytest.mark.skipif(not TU.is_dir(), reason="shared data missing")
def test_tu_source_runs_no_code_from_caches_and_sees_edited_files(tmp_path, monkeypatch):
    source = tmp_path / "tu"
    shutil.copytree(TU / "MUTAG", source / "MUTAG")
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pt = ["data.pt", "pre_transform.pt", "pre_filter.pt"]
    # every place a TU cache has lived: PyG's processed/ beside raw/, and align's cache keyed by path
    plant(source / "MUTAG" / "processed", pt, marker)
    for base in (tmp_path / "cache", tmp_path / "home" / ".cache" / "align", tmp_path / "explicit"):
        for attr in (False, True):
            key = hashlib.sha1(f"{source.resolve()}|{attr}".encode()).hexdigest()[:12]
            plant(base / "tu" / key / "MUTAG" / "processed", pt, marker)
    spec = lambda **kw: DatasetSpec(
        source="tu-dataset",
        data_dir=str(source),
        split="all",
        columns={"graph": "graph"},
        label_column="label",
        load_kwargs={"name": "MUTAG", **kw},
    )
    table = load_table(spec())
    load_table(spec(use_node_attr=True))
    assert not marker.exists(), "a planted pickle was executed"
    assert len(table) == 188 and np.bincount(table["label"]).tolist() == [63, 125]
    # the raw files are the only truth: an edit shows at once (no stale cache keyed by the path)
    labels_file = source / "MUTAG" / "raw" / "MUTAG_graph_labels.txt"
    lines = labels_file.read_text().split()
    labels_file.write_text("\n".join(["-1" if v == "1" else "1" for v in lines]) + "\n")
    flipped = load_table(spec())
    assert [1 - v for v in table["label"]] == list(flipped["label"])
    with pytest.raises(DataError, match="unknown load_kwargs \\['cache_dir'\\]"):
        load_table(spec(cache_dir=str(tmp_path / "explicit")))


@pytest.mark.skipif(not CITESEER.is_dir(), reason="shared data missing")
def test_graph_node_store_holds_plain_arrays_and_refuses_a_pickle(tmp_path):
    from align.modalities.graph_io import load_store

    table = load_table(
        DatasetSpec(
            source="graph-nodes",
            data_dir=str(CITESEER),
            split="train",
            columns={"graph": "graph"},
            label_column="label",
            load_kwargs={"name": "citeseer", "cache_dir": str(tmp_path / "cache")},
        )
    )
    store = Path(table[0]["graph"]["store"])
    files = sorted(p.name for p in store.iterdir())
    assert files and all(n.endswith((".npy", ".json")) for n in files), files
    for name in files:  # every array loads with pickles refused
        if name.endswith(".npy"):
            np.load(store / name, allow_pickle=False)
    # replace the feature matrix with a pickled object array: refused, nothing runs
    marker = tmp_path / "code-ran"
    copy = tmp_path / "planted"
    shutil.copytree(store, copy)
    np.save(copy / "x.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(SampleError, match=r"planted: cannot read it \(Array can't be memory-mapped: Python objects"):
        load_store(str(copy))
    assert not marker.exists()


def bomb(path: Path) -> Path:
    """A real PNG of 20000 x 20000 1-bit pixels (a few KB on disk, 400 M pixels decoded)."""
    from PIL import Image

    Image.new("1", (20000, 20000)).save(path)
    return path


def test_decompression_bomb_is_a_sample_error_and_skipped(tmp_path):
    from align.data.sources.sklearn_digits import sklearn_digits

    digits = sklearn_digits("test")
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        digits["image"][i].save(paths[-1])
    paths[2] = str(bomb(tmp_path / "huge.png"))
    pre = {
        "image": build_adapter(
            "image",
            {
                "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
                "output_dim": 32,
            },
        ).preprocessor()
    }
    import datasets

    table = datasets.Dataset.from_dict({"path": paths})
    strict = PairedDataset(table, {"image": "path"}, pre, train=True, name="data.train (csv)")
    with pytest.raises(
        SampleError,
        match=r"data.train \(csv\) row 2, column 'path' \(image\): image file .*huge.png: "
        r"refused, too many pixels",
    ):
        strict[2]
    skipping = PairedDataset(table, {"image": "path"}, pre, train=True, name="data.train", on_error="skip")
    item = skipping[2]  # training draws another row instead, and counts the skip
    assert item["skipped"] == [2] and item["index"] != 2 and item["image"].shape == (3, 16, 16)


def test_empty_captions_are_named_or_skipped(tmp_path):
    rows = [
        {"caption": "a handwritten seven."},
        {"caption": "   "},
        {"caption": ""},
        {"caption": ["a digit.", " "]},
        {"caption": "the digit two."},
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3] + rows[4:]))
    spec = DatasetSpec(
        source="json",
        data_files=str(path),
        columns={"text": "caption"},
        load_kwargs={"cache_dir": str(tmp_path / "hf")},
    )
    table = load_table(spec)
    pre = {
        "text": build_adapter(
            "text",
            {
                "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
                "output_dim": 32,
            },
        ).preprocessor()
    }
    ds = PairedDataset(table, {"text": "caption"}, pre, train=False, name="eval.data (json)")
    assert ds[0]["text"] == "a handwritten seven."
    for row in (1, 2):
        with pytest.raises(
            SampleError,
            match=rf"eval.data \(json\) row {row}, column 'caption' \(text\): "
            r"text is empty or whitespace only",
        ):
            ds[row]
    with pytest.raises(SampleError, match="caption 1 of 2 is empty"):
        pre["text"](rows[3]["caption"], train=True)
    skipping = PairedDataset(table, {"text": "caption"}, pre, train=False, name="eval.data", on_error="skip")
    assert skipping[1] == {"index": 1, "skipped": [1]}  # evaluation leaves the row out


@pytest.mark.skipif(not CITESEER.is_dir(), reason="shared data missing")
def test_planetoid_raw_pickles_cannot_run_code(tmp_path):
    raw = tmp_path / "citeseer" / "raw"
    shutil.copytree(CITESEER / "raw", raw)
    spec = lambda: DatasetSpec(
        source="graph-nodes",
        data_dir=str(tmp_path / "citeseer"),
        split="test",
        columns={"graph": "graph"},
        label_column="label",
        load_kwargs={"name": "citeseer", "cache_dir": str(tmp_path / "cache")},
    )
    assert len(load_table(spec())) == 1000  # the real files load through the restricted unpickler
    marker = tmp_path / "code-ran"
    import pickle

    (raw / "ind.citeseer.graph").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(
        DataError, match=r"cannot read planetoid 'citeseer'.*refused to load global '(__builtin__|builtins).exec'"
    ):
        load_table(spec())
    assert not marker.exists()
