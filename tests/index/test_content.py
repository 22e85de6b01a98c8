"""Index tampering that a recomputed manifest hides (issue 21 item 5): index.faiss rebuilt with other
vectors or another count, metadata.jsonl with two captions swapped, then manifest.json rewritten over
them with align's own manifest writer. Each is refused naming the file, because content.json (written
at build time, not part of the manifest) still describes the index that was built."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from align.index.embedding_index import EmbeddingIndex
from align.index.files import IndexFormatError
from align.io.manifest import file_entries, read_manifest, write_manifest
from tests.support.index_files import as_jsonl_folder, read_records, write_records

DIM, N = 16, 100


def vectors(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def build(folder: Path, x: np.ndarray | None = None, n: int = N) -> EmbeddingIndex:
    """A small Flat index whose every item has its own caption and label, saved to ``folder``."""
    index = EmbeddingIndex(DIM, model="sha256:0123456789abcdef /ckpt", modality="image")
    x = vectors(1, n) if x is None else x
    index.add(x, metadata=[{"caption": f"caption {i}", "label": f"label {i}"} for i in range(len(x))])
    index.save(folder, overwrite=True)
    return index


def forge_manifest(folder: Path) -> None:
    """Rewrite manifest.json as align's own writer would over the files now in the folder: every field
    that describes index.faiss (count, dim, index_sha256) and every file's size and sha256."""
    import faiss

    fields = {k: v for k, v in read_manifest(folder).items() if k != "files"}
    index = faiss.read_index(str(folder / "index.faiss"))
    files = file_entries(folder)
    fields.update(count=int(index.ntotal), dim=int(index.d), index_sha256=files["index.faiss"]["sha256"])
    write_manifest(folder, fields, files)


def swap_index_faiss(folder: Path, x: np.ndarray) -> None:
    """Replace index.faiss with an index of ``x`` (ids 0..len(x)-1), built elsewhere by align itself."""
    build(folder.parent / "elsewhere", x)
    (folder / "index.faiss").write_bytes((folder.parent / "elsewhere" / "index.faiss").read_bytes())


def test_index_faiss_with_other_vectors_and_a_recomputed_manifest_is_refused(tmp_path):
    folder = tmp_path / "idx"
    build(folder)
    swap_index_faiss(folder, vectors(2))  # same count, same ids, other vectors
    forge_manifest(folder)
    with pytest.raises(IndexFormatError, match=r"idx: index.faiss is not the file this index was built with"):
        EmbeddingIndex.load(folder)


def test_index_faiss_with_another_count_and_a_recomputed_manifest_is_refused(tmp_path):
    folder = tmp_path / "idx"
    build(folder)
    swap_index_faiss(folder, vectors(1)[: N - 1])  # the last item hidden from both files
    write_records(folder, read_records(folder)[:-1])
    forge_manifest(folder)
    with pytest.raises(
        IndexFormatError, match=rf"idx: index.faiss holds {N - 1} vectors but content.json describes {N} items"
    ):
        EmbeddingIndex.load(folder)


def test_swapped_captions_with_a_recomputed_manifest_are_refused(tmp_path):
    folder = tmp_path / "idx"
    build(folder)
    rows = read_records(folder)
    rows[0]["metadata"], rows[1]["metadata"] = rows[1]["metadata"], rows[0]["metadata"]
    write_records(folder, rows)
    forge_manifest(folder)
    with pytest.raises(IndexFormatError, match=r"idx: metadata.arrow is not the file this index was built with"):
        EmbeddingIndex.load(folder)


def test_content_record_edited_to_match_is_refused(tmp_path):
    """content.json hand-edited to describe the swapped files (without its own digest) is caught too."""
    folder = tmp_path / "idx"
    build(folder)
    swap_index_faiss(folder, vectors(2))
    record = json.loads((folder / "content.json").read_text())
    record["index_sha256"] = file_entries(folder, ["index.faiss"])["index.faiss"]["sha256"]
    (folder / "content.json").write_text(json.dumps(record))
    forge_manifest(folder)
    with pytest.raises(IndexFormatError, match=r"idx: content.json was edited"):
        EmbeddingIndex.load(folder)


def test_manifest_fields_must_agree_with_the_content_record(tmp_path):
    """A recomputed manifest naming another model (so queries would use its checkpoint) is refused."""
    folder = tmp_path / "idx"
    build(folder)
    m = read_manifest(folder)
    write_manifest(folder, {**m, "model": "sha256:fedcba9876543210 /other"}, m["files"])
    with pytest.raises(IndexFormatError, match=r"idx: manifest.json says model .*/other.* content.json records"):
        EmbeddingIndex.load(folder)


def test_dropping_the_content_record_warns(tmp_path):
    """A folder without content.json reads as one an older align wrote (format 2): it still loads,
    checked against manifest.json only, and says so."""
    folder = tmp_path / "idx"
    build(folder)
    as_jsonl_folder(folder)
    (folder / "content.json").unlink()
    m = read_manifest(folder)
    write_manifest(folder, {**m, "format_version": 2}, file_entries(folder))
    with pytest.warns(UserWarning, match=r"idx: .*no content.json"):
        assert len(EmbeddingIndex.load(folder)) == N
    write_manifest(folder, {**m, "format_version": 3}, file_entries(folder))
    with pytest.raises(IndexFormatError, match=r"idx: missing content.json"):
        EmbeddingIndex.load(folder)


def test_untouched_index_loads_silently_and_searches_identically(tmp_path):
    folder = tmp_path / "idx"
    index = build(folder)
    record = json.loads((folder / "content.json").read_text())
    assert (record["count"], record["dim"], record["model"], record["modality"]) == (N, DIM, index.model, "image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = EmbeddingIndex.load(folder)
    q = vectors(3, 5)
    assert loaded.search_with_metadata(q, 4) == index.search_with_metadata(q, 4)
    assert loaded.get_metadata(7) == {"caption": "caption 7", "label": "label 7"}
