"""Building an index past RAM: vectors arrive in chunks, spill to a scratch folder, and are added from
there, so a build holds one chunk plus the index's in-RAM part, never every vector or metadata row.

``Spill`` is the scratch folder of one build: ``vectors.f32`` (the chunks' float32 rows appended, read
back a block at a time with ``np.fromfile``, so reading does not map the whole file into the process),
``metadata.arrow`` (one record batch per chunk, the format ``align/index/metadata.py`` serves from)
and the ids in memory (8 bytes an item). ``build_from_chunks`` then

1. trains the index's IVF / PQ parts on a seeded random sample of the spilled rows (100,000 by
   default, read row by row with ``os.pread``: a sample from the first chunk only would train the
   codebook on the first classes of a sorted dataset);
2. adds the rows a block at a time. For ``storage="ondisk"`` each block becomes an IVF shard written
   to the scratch folder, and faiss's own ``merge_ondisk`` merges the shards, memory-mapped, into one
   ``lists.ivfdata`` (``OnDiskInvertedLists``): the lists are never all in memory, which adding to an
   in-RAM index and moving its lists to disk afterwards would need.

Memory caps: pyarrow's default allocator (mimalloc) reserves a 1 GiB arena of address space on the
first record batch written, untouched (not resident) but counted by ``RLIMIT_DATA``; a build under such a cap sets
``ARROW_DEFAULT_MEMORY_POOL=system`` (measured: VmData 75 MB -> 1,145 MB after one batch with
mimalloc, 122 MB with the system allocator). A cgroup's limit counts resident memory and is unaffected.

What is scored afterwards reads the same file: ``align.index.score.measure`` takes ``Spill.blocks``
and computes exact search block by block (faiss's ``knn_ground_truth``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from align.index.embedding_index import EmbeddingIndex
from align.index.metadata import METADATA, ArrowMetadata, MetadataView, _dumps, _schema

TRAIN_ROWS = 100_000  # vectors IVF / PQ training sees (faiss subsamples k-means to 256 per list anyway)
BLOCK_ROWS = 65_536  # rows read back per block when adding or scoring
SHARD_BYTES = 256 * 2**20  # codes per on-disk shard: one shard's lists are in memory while it is built


@dataclass
class Chunk:
    """Rows of a build: ``vectors [n, dim]``, their ``ids`` (ascending, above every earlier chunk's)
    and optional per-row metadata dicts."""

    vectors: np.ndarray
    ids: np.ndarray
    metadata: list[dict] | None = None


class Spill:
    """A build's scratch folder: vectors appended to ``vectors.f32``, metadata to ``metadata.arrow``."""

    def __init__(self, folder: str | Path, dim: int) -> None:
        import pyarrow as pa

        self.folder, self.dim = Path(folder), int(dim)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "vectors.f32"
        self._vectors = open(self.path, "wb")
        self._meta_path = self.folder / METADATA
        self._sink = pa.OSFile(str(self._meta_path), "wb")
        self._schema = _schema([])  # the fields are known only at the end: kept aside, set on the reader
        self._writer = pa.ipc.new_file(self._sink, self._schema)
        self.fields: set[str] = set()
        self.count, self._last = 0, None
        self.ids: np.ndarray | None = None

    def append(self, chunk: Chunk) -> None:
        import pyarrow as pa

        x = np.ascontiguousarray(chunk.vectors, dtype=np.float32)
        ids = np.ascontiguousarray(np.asarray(chunk.ids).reshape(-1), dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) != len(ids):
            raise ValueError(f"chunk of {tuple(x.shape)} vectors and {len(ids)} ids; expected [N, {self.dim}] and N")
        if not len(ids):
            return
        if np.any(np.diff(ids) <= 0) or (self._last is not None and ids[0] <= self._last):
            raise ValueError(f"chunk ids must ascend past {self._last}: got {ids[:3].tolist()}...")
        meta = chunk.metadata if chunk.metadata is not None else [{}] * len(ids)
        if len(meta) != len(ids):
            raise ValueError(f"chunk of {len(ids)} rows but {len(meta)} metadata entries")
        for m in meta:
            self.fields.update(m)
        texts = [_dumps(m or {}) for m in meta]
        batch = pa.record_batch([pa.array(ids), pa.array(texts, pa.large_string())], schema=self._schema)
        self._writer.write_batch(batch)
        x.tofile(self._vectors)  # no bytes copy (an 8 MB one per chunk fragmented the heap: +10 B an item)
        self.count += len(ids)
        self._last = int(ids[-1])

    def close(self) -> MetadataView:
        """Finish the files; the metadata as an ``EmbeddingIndex`` holds it (the mapped file)."""
        self._writer.close()
        self._sink.close()
        self._vectors.close()
        base = ArrowMetadata(self._meta_path)
        self.ids = base.ids  # the metadata file's id column, already read once for lookups: 8 bytes an item
        base.fields = sorted(self.fields)
        return MetadataView(base)

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        """The spilled vectors in order, ``rows`` at a time (each block read into its own array)."""
        row_bytes = 4 * self.dim
        with open(self.path, "rb") as f:
            for start in range(0, self.count, rows):
                n = min(rows, self.count - start)
                f.seek(start * row_bytes)
                yield np.fromfile(f, dtype=np.float32, count=n * self.dim).reshape(n, self.dim)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at these row positions (in the order given)."""
        row_bytes = 4 * self.dim
        out = np.empty((len(positions), self.dim), np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j, p in enumerate(np.asarray(positions, dtype=np.int64).tolist()):
                out[j] = np.frombuffer(os.pread(fd, row_bytes, p * row_bytes), np.float32)
        finally:
            os.close(fd)
        return out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` rows drawn without replacement by a seeded RNG (all rows when there are fewer)."""
        if self.count <= n:
            return np.concatenate(list(self.blocks())) if self.count else np.zeros((0, self.dim), np.float32)
        picks = np.sort(np.random.default_rng(seed).choice(self.count, n, replace=False))
        return self.rows(picks)


def spill_chunks(chunks: Iterable[Chunk], dim: int, scratch: str | Path) -> tuple[Spill, MetadataView]:
    """Every chunk's rows written to the scratch folder: the spill and its metadata."""
    spill = Spill(scratch, dim)
    for chunk in chunks:
        spill.append(chunk)
    return spill, spill.close()


def index_from_spill(
    spill: Spill,
    meta: MetadataView,
    spec: str,
    *,
    storage: str = "ram",
    model: str | None = None,
    modality: str | None = None,
    train_rows: int = TRAIN_ROWS,
    seed: int = 0,
) -> EmbeddingIndex:
    """An ``EmbeddingIndex`` of the spilled rows: trained on a sample of them, then added a block at a
    time (``storage="ondisk"``: as shards merged into the spill folder's ``lists.ivfdata``)."""
    if storage not in ("ram", "ondisk"):
        raise ValueError(f"storage must be 'ram' or 'ondisk', got {storage!r}")
    index = EmbeddingIndex(spill.dim, spec, model=model, modality=modality)
    if storage == "ondisk":
        import faiss

        if faiss.try_extract_index_ivf(index.inner) is None:
            raise ValueError(f"lists on disk need an IVF index (e.g. IVF1024,Flat), not {spec!r}")
    if spill.count:
        index.train(spill.sample(train_rows, seed))
        if storage == "ondisk":
            _add_on_disk(index, spill, spill.folder)
        else:
            start = 0
            for block in spill.blocks():
                index.add(block, ids=spill.ids[start : start + len(block)])
                start += len(block)
    index._meta = meta
    index._max_id = int(spill.ids.max()) if spill.count else None
    return index


def build_from_chunks(
    chunks: Iterable[Chunk], dim: int, spec: str, scratch: str | Path, *, storage: str = "ram", **kwargs
) -> tuple[EmbeddingIndex, Spill]:
    """``spill_chunks`` then ``index_from_spill``: the index of every chunk's rows, built through the
    scratch folder ``scratch`` (which must outlive the index until it is saved: its metadata file,
    and with ``storage="ondisk"`` its lists file, are there). Returns the index and the spill."""
    spill, meta = spill_chunks(chunks, dim, scratch)
    return index_from_spill(spill, meta, spec, storage=storage, **kwargs), spill


def _add_on_disk(index: EmbeddingIndex, spill: Spill, scratch: Path) -> None:
    """Add the spilled rows as IVF shards of ``SHARD_BYTES`` of codes each, then merge them into
    ``scratch/lists.ivfdata`` with faiss's ``merge_ondisk`` (shards read memory-mapped)."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    ivf = faiss.extract_index_ivf(index.index)
    per_shard = max(BLOCK_ROWS, SHARD_BYTES // (int(ivf.code_size) + 8))
    shards_dir = scratch / "shards"
    shards_dir.mkdir(exist_ok=True)
    names, start, shard, filled = [], 0, None, 0

    def flush() -> None:
        nonlocal shard, filled
        names.append(str(shards_dir / f"shard-{len(names):05d}.index"))
        faiss.write_index(shard, names[-1])
        shard, filled = None, 0

    for block in spill.blocks():
        if shard is None:
            shard = faiss.clone_index(index.index)  # trained and empty: same quantizer, same codebooks
        shard.add_with_ids(index._as_array(block), spill.ids[start : start + len(block)])
        start += len(block)
        filled += len(block)
        if filled >= per_shard:
            flush()
    if shard is not None:
        flush()
    merge_ondisk(index.index, names, str(scratch / "lists.ivfdata"))
    index.lists_path = scratch / "lists.ivfdata"
    shutil.rmtree(shards_dir)  # the merged file holds every code; the shards' are mapped no longer
