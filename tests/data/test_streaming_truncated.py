"""A webdataset shard cut short (align/data/shard_truncation.py) is named as truncated, with the byte
and the samples read from it, instead of as a sample with a missing label: ``on_error: raise``
refuses the stream naming the shard, ``on_error: skip`` streams its whole samples and only those.
Shards are written by ``align shards`` from a small real config (FSDD recordings)."""

from __future__ import annotations

import copy
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from align.app.cli import main as align_main
from align.config.dataset import DatasetSpec
from align.config.schema import ModelConfig
from align.data.shards import write_shards
from align.data.streaming import StreamingLoader, head_table
from align.errors import DataError
from align.model.align_model import AlignModel
from tests.support.tiny import TINY_MODALITIES

REPO = Path(__file__).resolve().parents[2]
FSDD = REPO.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
AST = {"sample_rate": 8000, "clip_seconds": 0.25, "n_mels": 32, "patch_size": 8, "patch_stride": 8, "width": 32}

pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason="shared data missing")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """60 of theo's recordings as 3 shards of 20, written by ``align shards`` from the FSDD config."""
    root = tmp_path_factory.mktemp("written")
    cfg = yaml.safe_load((REPO / "configs" / "fsdd-audio-text.yaml").read_text())
    cfg["data"]["train"].update(
        data_files=str(FSDD / "*.wav"), where={"speaker": {"eq": "theo"}, "take": {"ge": 5, "lt": 11}}
    )
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    args = ["shards", str(root / "cfg.yaml"), str(root / "shards"), "--prefix", "fsdd", "--shard-size", "20"]
    assert align_main([*args, "--keep-order"]) == 0
    return root / "shards"


@pytest.fixture(scope="module")
def pre() -> dict:
    mods = {"text": copy.deepcopy(TINY_MODALITIES["text"]), "audio": {"options": {**AST, "layers": 1, "heads": 2}}}
    return AlignModel(ModelConfig(embed_dim=16, modalities=mods)).preprocessors()


def samples(shard: Path) -> list[tuple[str, list[tarfile.TarInfo]]]:
    """The shard's samples in order: (key, its members)."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    out: list[tuple[str, list[tarfile.TarInfo]]] = []
    for m in members:
        key = m.name.split(".", 1)[0]
        if not out or out[-1][0] != key:
            out.append((key, []))
        out[-1][1].append(m)
    return out


def cut_copy(written: Path, tmp_path: Path, where: str) -> tuple[Path, int, list, list[str]]:
    """The shards with fsdd-000001.tar cut in its 8th sample: inside the .wav's bytes, at the header of
    its 2nd member, or just before it (between samples). Returns (folder, cut byte, that shard's
    samples, every key a reader can still get whole)."""
    out = tmp_path / "cut"
    shutil.copytree(written, out)
    victim = out / "fsdd-000001.tar"
    shard = samples(victim)
    eighth = shard[7][1]
    wav = next(m for m in eighth if m.name.endswith(".wav"))
    byte = {
        "inside-a-member": wav.offset_data + wav.size // 2,
        "at-a-member-header": eighth[1].offset,
        "between-samples": eighth[0].offset,
    }[where]
    victim.write_bytes(victim.read_bytes()[:byte])
    whole = [k for f in sorted(out.glob("*.tar")) if f != victim for k, _ in samples(f)]
    return out, byte, shard, whole + [k for k, _ in shard[:7]]


def spec(folder: Path, **kw) -> dict:
    return {
        "source": "webdataset",
        "data_files": str(folder / "fsdd-*.tar"),
        "streaming": True,
        "shuffle_buffer": 1,
        "columns": {"audio": "wav", "text": "txt"},
        "label_column": "json.label",
        "label_names": NAMES,
        **kw,
    }


def loader(s: dict, pre: dict) -> StreamingLoader:
    s = DatasetSpec(**s)
    return StreamingLoader(s, "data.train", {m: pre[m] for m in s.columns}, batch_size=1, seed=0)


WHERE = ["inside-a-member", "at-a-member-header", "between-samples"]


@pytest.mark.parametrize("where", WHERE)
def test_a_truncated_shard_is_refused_naming_it_and_the_byte(written, tmp_path, pre, where):
    folder, byte, shard, _ = cut_copy(written, tmp_path, where)
    cut = f", sample '{shard[7][0]}' cut at it" if where != "between-samples" else ""
    expected = (
        rf"config key 'data\.train\.data_files': shard fsdd-000001\.tar is truncated at byte {byte} \(samples "
        rf"after it are lost\): 7 whole samples before the cut{cut}; 13 of its 20 samples are lost"
    )  # the count align shards recorded in fsdd.shards.json, less the 7 whole ones
    with pytest.raises(DataError, match=expected):
        loader(spec(folder), pre)
    with pytest.raises(DataError, match=expected):  # the look before training too
        head_table(DatasetSpec(**spec(folder)))
    (folder / "fsdd.shards.json").unlink()  # shards from another tool: no record, so no count
    with pytest.raises(DataError, match=rf"; the samples after byte {byte} are lost \(count unknown"):
        loader(spec(folder), pre)


@pytest.mark.parametrize("where", WHERE)
def test_skip_reads_the_whole_samples_and_reports_what_was_lost(written, tmp_path, pre, where, caplog):
    folder, byte, shard, whole = cut_copy(written, tmp_path, where)
    with caplog.at_level(logging.WARNING, logger="align.data.streaming"):
        stream = loader(spec(folder, on_error="skip"), pre)
        batches = list(stream.epoch_batches())
    assert [(Path(t.shard).name, t.size, t.whole) for t in stream.truncated] == [("fsdd-000001.tar", byte, 7)]
    read = [k for b in batches for k in b["keys"]]
    assert sorted(read) == sorted(whole) and len(read) == 47  # 20 + 7 + 20: nothing after the cut, no cut sample
    assert sum(int(b.get("skipped", 0)) for b in batches) == 0  # lost to the cut, not 1 "skipped" sample
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warned) == 1 and f"truncated at byte {byte}" in warned[0]
    assert "reading its 7 whole samples" in warned[0] and "13 of its 20 samples are lost" in warned[0]
    assert (folder / "fsdd-000001.tar").stat().st_size == byte  # the shard itself is left as it is


def test_a_first_shard_cut_in_its_first_header_is_left_out_under_skip(written, tmp_path, pre):
    out = tmp_path / "cut"
    shutil.copytree(written, out)
    first = out / "fsdd-000000.tar"  # the shard datasets infers the columns from
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(DataError, match=r"shard fsdd-000000\.tar is truncated at byte 100 .*: 0 whole samples"):
        loader(spec(out), pre)
    stream = loader(spec(out, on_error="skip"), pre)
    read = [k for b in stream.epoch_batches() for k in b["keys"]]
    assert len(read) == 40 and [t.whole for t in stream.truncated] == [0]


def test_a_cut_the_end_check_misses_is_named_mid_stream(tmp_path, pre):
    """A cut inside a run of zero bytes leaves a file that ends as a whole tar does; the reader stops
    at it and the error names the truncated shard."""
    rows = [
        {"__key__": f.stem, "wav": f.read_bytes(), "txt": "a person saying a digit.", "json": {"label": int(f.stem[0])}}
        for f in sorted(FSDD.glob("*_theo_12.wav"))
    ]
    rows[6]["npy"] = np.zeros(4096, dtype=np.float32)  # 16 KiB of zeros inside the 7th sample
    for r in rows:
        r.setdefault("npy", np.ones(1, dtype=np.float32))
    write_shards(rows, tmp_path / "s", 10, prefix="fsdd")
    victim = tmp_path / "s" / "fsdd-000000.tar"
    npy = next(m for k, ms in samples(victim) if k == rows[6]["__key__"] for m in ms if m.name.endswith(".npy"))
    byte = (npy.offset_data // 512 + 8) * 512  # inside the zeros, on a block boundary
    victim.write_bytes(victim.read_bytes()[:byte])
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match=rf"shard fsdd-000000\.tar is truncated at byte {byte} .*6 whole samples"):
            list(loader(spec(tmp_path / "s", on_error=on_error), pre).epoch_batches())
