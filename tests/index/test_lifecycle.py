"""``align index add`` / ``remove`` and lists on disk (issue 23 item 3 and part of 2): rows appended with
new ids and found by a query, another checkpoint's add refused, removal by id, an on-disk IVF index that
searches like the in-memory one and survives an add, a truncated lists file named, and a change killed
half-way leaving the old folder whole. A tiny untrained open_clip image<->text model; sklearn digits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from align.app.cli import main
from align.config.schema import config_from_dict
from align.index.build import parse_data_spec
from align.index.embedding_index import EmbeddingIndex
from align.index.files import IndexFormatError
from align.index.lifecycle import update_folder
from align.model.align_model import AlignModel, raw_encoder
from align.model.checkpoint import load_model, save_checkpoint
from tests.support.tiny import TINY_MODALITIES

COLUMNS = "columns: {image: image, text: caption}, label_column: label}"
FIRST = "{source: sklearn-digits, split: test, max_samples: 24, " + COLUMNS
MORE = "{source: sklearn-digits, split: train, max_samples: 10, " + COLUMNS


def checkpoint(tmp_path: Path, seed: int) -> Path:
    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / f"run{seed}"),
            "seed": seed,
            "model": {"embed_dim": 16, "modalities": TINY_MODALITIES},
            "data": {"train": parse_data_spec(FIRST).model_dump(exclude_unset=True)},
            "train": {"steps": 1},
        }
    )
    torch.manual_seed(seed)
    return save_checkpoint(tmp_path / f"run{seed}" / "checkpoints", 1, AlignModel(cfg.model), cfg)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    return checkpoint(tmp, 0), checkpoint(tmp, 1)


def build(ckpt: Path, out: Path, *extra: str) -> Path:
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--data",
                FIRST,
                "--modality",
                "image",
                "--out",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    return out


def first_image_of(spec: str):
    from align.data.tables import load_table

    table = load_table(parse_data_spec(spec), "data")
    return table[0]["image"]


def test_add_appends_new_ids_that_a_query_finds_and_remove_drops_them(ckpts, tmp_path, capsys):
    ckpt, _ = ckpts
    folder = build(ckpt, tmp_path / "idx")
    assert main(["index", "add", str(folder), "--data", MORE]) == 0
    assert "added 10 items (ids 24..33)" in capsys.readouterr().out
    index = EmbeddingIndex.load(folder)
    assert len(index) == 34 and sorted(index.ids.tolist()) == list(range(34))
    model, _ = load_model(ckpt)
    query = raw_encoder(model, "image")([first_image_of(MORE)])
    score, id_, meta = index.search_with_metadata(query, 1)[0][0]
    assert id_ == 24 and score > 0.999 and meta["row"] == 0  # the first added row, as its own nearest item
    assert main(["index", "remove", str(folder), "--ids", "24,0"]) == 0
    index = EmbeddingIndex.load(folder)
    assert len(index) == 32 and {0, 24}.isdisjoint(index.ids.tolist())
    assert 24 not in index.search(query, 5)[1][0].tolist()
    before = (folder / "manifest.json").read_bytes()
    assert main(["index", "remove", str(folder), "--ids", "7,999"]) == 2
    assert "999" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == before  # nothing removed


def test_an_add_from_another_checkpoint_is_refused_and_changes_nothing(ckpts, tmp_path, capsys):
    ckpt, other = ckpts
    folder = build(ckpt, tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main(["index", "add", str(folder), "--data", MORE, "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not the model index" in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_on_disk_lists_search_like_memory_survive_an_add_and_a_truncation_is_named(ckpts, tmp_path, capsys):
    ckpt, _ = ckpts
    ram = EmbeddingIndex.load(build(ckpt, tmp_path / "ram", "--spec", "IVF2,Flat"))
    disk_folder = build(ckpt, tmp_path / "disk", "--spec", "IVF2,Flat", "--on-disk")
    assert (disk_folder / "lists.ivfdata").is_file()
    disk = EmbeddingIndex.load(disk_folder)
    assert disk.lists_path == disk_folder / "lists.ivfdata" and ram.lists_path is None
    q = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    for index in (ram, disk):
        index.set_search_params(nprobe=2)  # every list: exact over the same codes
    np.testing.assert_array_equal(ram.search(q, 5)[1], disk.search(q, 5)[1])
    del disk
    assert main(["index", "add", str(disk_folder), "--data", MORE]) == 0
    disk = EmbeddingIndex.load(disk_folder)
    assert len(disk) == 34 and disk.lists_path is not None and sorted(disk.ids.tolist()) == list(range(34))
    assert disk.get_metadata(30)["row"] == 6
    del disk
    lists = disk_folder / "lists.ivfdata"
    lists.write_bytes(lists.read_bytes()[:-100])
    with pytest.raises(IndexFormatError, match=r"disk: lists.ivfdata: .*truncated"):
        EmbeddingIndex.load(disk_folder)
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--data",
                FIRST,
                "--modality",
                "image",
                "--out",
                str(tmp_path / "flat"),
                "--on-disk",
            ]
        )
        == 2
    )
    assert "--on-disk: lists on disk need an IVF index" in capsys.readouterr().err


def test_hnsw_cannot_remove_and_says_so(tmp_path):
    index = EmbeddingIndex(8, "HNSW8")
    index.add(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="HNSW graph, which faiss cannot remove"):
        index.remove([3])


KILLED = """
import sys, time
import numpy as np
from align.index.lifecycle import update_folder

def change(index):
    index.add(np.ones((5, 8), np.float32), ids=np.arange(1000, 1005))
    print("changing", flush=True)
    time.sleep(60)

update_folder(sys.argv[1], change)
"""


@pytest.mark.parametrize("spec", ["Flat", "IVF4,Flat"])
def test_a_killed_or_failed_change_leaves_the_old_folder_whole(tmp_path, spec):
    index = EmbeddingIndex(8, spec)
    index.add(
        np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32), metadata=[{"i": i} for i in range(200)]
    )
    if spec != "Flat":
        index.move_lists_to_disk(tmp_path / "scratch.ivfdata")
    folder = index.save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(folder)], stdout=subprocess.PIPE, cwd=os.getcwd())
    while (line := proc.stdout.readline()) and line.strip() != b"changing":  # faiss prints its own lines
        pass
    assert line.strip() == b"changing"  # mid-change: the new index is half written
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(EmbeddingIndex.load(folder)) == 200

    def fail(ix):
        ix.add(np.ones((5, 8), np.float32), ids=np.arange(2000, 2005))
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        update_folder(folder, fail)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
