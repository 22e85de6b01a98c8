"""align.index.encode: rows encoded a chunk at a time from a table or a stream (webdataset shards
read by datasets' streaming), with ids that do not depend on the chunk size or the process count."""

from __future__ import annotations

import numpy as np
import pytest

from align.config.dataset import DatasetSpec
from align.data.shards import write_shards
from align.index.build import build_index
from align.index.chunked import spill_chunks
from align.index.encode import EncodedChunks, row_chunks
from align.model.checkpoint import load_model
from tests.data.test_streaming import digit_rows
from tests.index.test_build import built as built  # noqa: F401  (fixture: a tiny checkpoint + index)


def stream_spec(files: str, **kw) -> DatasetSpec:
    return DatasetSpec(
        source="webdataset",
        data_files=files,
        streaming=True,
        columns={"image": "png", "text": "txt"},
        label_column="json.label",
        **kw,
    )


@pytest.fixture
def shards(tmp_path) -> str:
    write_shards(digit_rows(0, 70), tmp_path / "shards", 20, prefix="digits")  # 4 shards: 20, 20, 20, 10
    return str(tmp_path / "shards" / "digits-*.tar")


def encode_all(model, spec, chunk_rows: int, world: int = 1):
    """Every process's chunks of a ``world``-process encode, merged back in id order."""
    chunks = []
    for rank in range(world):
        chunks += list(EncodedChunks(model, row_chunks(spec, None, chunk_rows, rank, world), spec, "image", 8, False))
    chunks.sort(key=lambda c: int(c.ids[0]))
    return chunks


def test_a_stream_is_encoded_in_chunks_the_same_whatever_their_size_or_the_process_count(built, shards):
    ckpt, _ = built
    model, _ = load_model(ckpt)
    spec = stream_spec(shards)
    whole = encode_all(model, spec, chunk_rows=1000)
    assert len(whole) == 1 and np.array_equal(whole[0].ids, np.arange(70))
    for chunk_rows, world in ((16, 1), (16, 2), (7, 3)):
        parts = encode_all(model, spec, chunk_rows, world)
        assert len(parts) == -(-70 // chunk_rows)
        assert np.array_equal(np.concatenate([c.ids for c in parts]), whole[0].ids)
        np.testing.assert_allclose(np.concatenate([c.vectors for c in parts]), whole[0].vectors, atol=1e-6)
        assert [m for c in parts for m in c.metadata] == whole[0].metadata
    first = whole[0].metadata[3]
    assert first["key"] == "digit0003" and first["row"] == 3 and first["caption"].startswith("a handwritten")
    assert isinstance(first["label"], int)


def test_index_build_streams_and_scores_cross_modal_queries_from_the_streams_head(built, shards, tmp_path):
    ckpt, _ = built
    index = build_index(ckpt, stream_spec(shards), "image", "Flat", batch_size=8, progress=False, chunk_rows=16)
    assert len(index) == 70 and sorted(index.ids.tolist()) == list(range(70))
    recall = index.build_report["recall@10"]
    assert set(recall) == {"text -> image (cross-modal)", "image (indexed items)"}
    assert recall["image (indexed items)"] == 1.0  # Flat is exact
    loaded = type(index).load(index.save(tmp_path / "streamed"))
    assert loaded.get_metadata(69)["key"] == "digit0069"


def test_a_bad_label_in_a_stream_is_skipped_and_counted_or_raised(built, tmp_path):
    from align.errors import SampleError

    ckpt, _ = built
    model, _ = load_model(ckpt)
    rows = list(digit_rows(0, 12))
    rows[5]["json"] = {"label": 42}  # not one of the 10 label_names
    write_shards(rows, tmp_path / "bad", 12, prefix="bad")
    files, names = str(tmp_path / "bad" / "bad-*.tar"), [str(i) for i in range(10)]
    with pytest.raises(SampleError, match="digit0005"):
        encode_all(model, stream_spec(files, label_names=names), 4)
    spec = stream_spec(files, label_names=names, on_error="skip")
    encoded = EncodedChunks(model, row_chunks(spec, None, 4), spec, "image", 8, False)
    spill, _ = spill_chunks(encoded, 16, tmp_path / "spill")
    assert encoded.skipped == 1 and 5 not in spill.ids.tolist() and spill.count == 11
