"""Index folders under concurrency and tampering (issue 12): concurrent saves to one folder, edited
metadata.jsonl, a folder without manifest.json, and `align index build` refusing an existing --out
before it loads a model or encodes anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from align.app.cli import main
from align.index.embedding_index import EmbeddingIndex
from align.index.files import IndexFormatError
from tests.support.index_files import as_jsonl_folder

DIM, N = 32, 3000  # big enough that writing takes milliseconds, so the two saves overlap
DATA = "{source: sklearn-digits, split: test, columns: {image: image, text: caption}, label_column: label}"


def make(tag: str, seed: int, n: int = N) -> EmbeddingIndex:
    """An index whose every item's metadata names its writer, so a mix of two saves shows up."""
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    index = EmbeddingIndex(DIM, model=f"model-{tag}", modality="image")
    index.add(x, metadata=[{"writer": tag, "i": i, "label": "cat"} for i in range(n)])
    return index


def assert_one_complete_index(folder: Path, expected: dict[str, EmbeddingIndex]) -> str:
    """The folder loads (every checksum holds) and is entirely one writer's index: returns its tag."""
    loaded = EmbeddingIndex.load(folder)
    tag = loaded.model.removeprefix("model-")
    assert tag in expected, loaded.model
    source = expected[tag]
    assert len(loaded) == len(source)
    assert {loaded.get_metadata(i)["writer"] for i in loaded.ids.tolist()} == {tag}
    q = source.index.reconstruct_n(0, 20)  # the writer's own vectors find themselves
    for a, b in zip(source.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)
    return tag


def test_concurrent_thread_saves_exactly_one_wins(tmp_path):
    a, b = make("a", 1), make("b", 2)
    for trial in range(8):
        folder = tmp_path / f"idx{trial}"
        barrier, results = threading.Barrier(2), {}

        def save(tag: str, index: EmbeddingIndex) -> None:
            barrier.wait()
            try:
                index.save(folder)
                results[tag] = "ok"
            except FileExistsError as e:
                results[tag] = str(e)

        threads = [threading.Thread(target=save, args=args) for args in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [t for t, r in results.items() if r == "ok"]
        assert len(winners) == 1, f"trial {trial}: {results}"
        loser = results["b" if winners == ["a"] else "a"]
        assert str(folder) in loser and "not empty" in loser and "overwrite=True" in loser
        assert assert_one_complete_index(folder, {"a": a, "b": b}) == winners[0]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


WRITER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.index.test_files import make
root, tag, trials, overwrite = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
index = make(tag, {"a": 1, "b": 2}[tag])
for t in range(trials):
    (root / f"ready-{tag}-{t}").touch()
    while not (root / f"go-{t}").exists():
        time.sleep(0.0005)
    try:
        index.save(root / f"idx{t}", overwrite=overwrite)
        print(t, "ok", flush=True)
    except FileExistsError as e:
        print(t, "refused", e, flush=True)
"""


def run_writer_processes(root: Path, trials: int, overwrite: bool) -> dict[int, dict[str, str]]:
    """Two processes save their own index to ``root/idx{t}`` at the same moment, ``trials`` times."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        tag: subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(Path(__file__).resolve().parents[2]),
                str(root),
                tag,
                str(trials),
                "1" if overwrite else "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("a", "b")
    }
    deadline = time.time() + 60
    for t in range(trials):
        while not all((root / f"ready-{tag}-{t}").exists() for tag in procs):
            assert time.time() < deadline and all(p.poll() is None for p in procs.values()), {
                tag: p.communicate() for tag, p in procs.items()
            }
            time.sleep(0.001)
        (root / f"go-{t}").touch()
    results: dict[int, dict[str, str]] = {t: {} for t in range(trials)}
    for tag, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        for line in out.splitlines():
            t, _, result = line.partition(" ")
            results[int(t)][tag] = result
    return results


def test_concurrent_process_saves_exactly_one_wins(tmp_path):
    indexes = {"a": make("a", 1), "b": make("b", 2)}
    results = run_writer_processes(tmp_path, trials=6, overwrite=False)
    for t, r in results.items():
        assert sorted(x.split(" ")[0] for x in r.values()) == ["ok", "refused"], f"trial {t}: {r}"
        winner = next(tag for tag, x in r.items() if x == "ok")
        loser = next(x for x in r.values() if x != "ok")
        assert str(tmp_path / f"idx{t}") in loser and "overwrite=True" in loser
        assert assert_one_complete_index(tmp_path / f"idx{t}", indexes) == winner


def test_concurrent_overwrites_leave_one_complete_index(tmp_path):
    indexes = {"a": make("a", 1), "b": make("b", 2)}
    for t in range(4):  # each folder already holds an index: both saves replace it
        make("old", 3, n=50).save(tmp_path / f"idx{t}")
    results = run_writer_processes(tmp_path, trials=4, overwrite=True)
    for t, r in results.items():
        assert r == {"a": "ok", "b": "ok"}, f"trial {t}: {r}"
        assert assert_one_complete_index(tmp_path / f"idx{t}", indexes) in ("a", "b")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_edited_metadata_is_refused_naming_the_file(tmp_path):
    folder = make("a", 1, n=100).save(tmp_path / "idx")
    meta = folder / "metadata.arrow"
    original = meta.read_bytes()
    edited = original.replace(b'"label": "cat"}', b'"label": "dog"}', 1)  # same length, same ids
    assert edited != original and len(edited) == len(original)
    meta.write_bytes(edited)
    with pytest.raises(
        IndexFormatError, match=r"idx: metadata.arrow: content is damaged \(sha256 .* does not match manifest"
    ):
        EmbeddingIndex.load(folder)
    meta.write_bytes(original)
    assert EmbeddingIndex.load(folder).get_metadata(0)["label"] == "cat"
    manifest = json.loads((folder / "manifest.json").read_text())  # it covers every other file
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}


def test_old_manifest_without_file_checksums_loads_with_a_warning(tmp_path):
    folder = as_jsonl_folder(make("a", 1, n=100).save(tmp_path / "idx"))
    (folder / "content.json").unlink()
    m = json.loads((folder / "manifest.json").read_text())
    del m["files"]
    (folder / "manifest.json").write_text(json.dumps({**m, "format_version": 1}))
    with pytest.warns(UserWarning, match="no checksum of metadata.jsonl"):
        assert len(EmbeddingIndex.load(folder)) == 100


def test_folder_with_the_old_bytes_manifest_loads_and_is_verified(tmp_path):
    """An index folder as align wrote it before the manifest schemas were one (format_version 2, per-file
    ``bytes`` + ``sha256``, indent 2) still loads, and a flipped byte is still refused naming the file."""
    import hashlib

    folder = as_jsonl_folder(make("a", 1, n=100).save(tmp_path / "idx"))
    (folder / "content.json").unlink()
    m = {**json.loads((folder / "manifest.json").read_text()), "format_version": 2}
    m["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(folder.iterdir())
        if p.name != "manifest.json"
    }
    (folder / "manifest.json").write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    assert EmbeddingIndex.load(folder).get_metadata(3)["i"] == 3
    blob = bytearray((folder / "index.faiss").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (folder / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match=r"idx: index.faiss: content is damaged \(sha256"):
        EmbeddingIndex.load(folder)
    (folder / "metadata.jsonl").write_bytes((folder / "metadata.jsonl").read_bytes()[:-10])
    blob[len(blob) // 2] ^= 0x01
    (folder / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match=r"idx: metadata.jsonl"):
        EmbeddingIndex.load(folder)


def test_missing_manifest_says_so(tmp_path, capsys):
    folder = make("a", 1, n=100).save(tmp_path / "idx")
    (folder / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="idx: has no manifest.json"):
        EmbeddingIndex.load(folder)
    from align.index.build import query_index

    with pytest.raises(IndexFormatError, match="no manifest.json"):
        query_index(folder, "text", "a seven")
    assert main(["query", "--index", str(folder), "--text", "a seven"]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json" in err and "checkpoint" not in err
    with pytest.raises(IndexFormatError, match="does not exist"):
        EmbeddingIndex.load(tmp_path / "nothing")


def build_cli(out: Path, *extra: str) -> list[str]:
    # a checkpoint that does not exist: any work past the --out check fails on it
    return [
        "index",
        "build",
        "--checkpoint",
        str(out.parent / "no-such-checkpoint"),
        "--data",
        DATA,
        "--modality",
        "image",
        "--out",
        str(out),
        *extra,
    ]


def test_index_build_refuses_existing_out_before_loading_the_model(tmp_path, capsys):
    folder = make("a", 1, n=100).save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(build_cli(folder)) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(folder) in err and "overwrite=True" not in err
    assert "checkpoint" not in err  # refused before it even looked for the model
    # the control: allowed to overwrite, the same command gets as far as the missing checkpoint
    assert main(build_cli(folder, "--overwrite")) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing replaced
    # a fresh folder passes the check too, and a non-index folder is never replaced
    assert main(build_cli(tmp_path / "new")) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(build_cli(tmp_path / "mine", "--overwrite")) == 2
    assert "not an index folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
