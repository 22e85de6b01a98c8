"""An index's per-item metadata as a memory-mapped Arrow file, so neither building nor serving holds
every row in memory.

``metadata.arrow`` is an Arrow IPC file of two columns: ``id`` (int64, ascending) and ``metadata`` (the
item's metadata as one JSON object per row, as ``metadata.jsonl`` held it up to index format 3), written
one record batch per chunk while an index is built. Its schema metadata lists the ``fields`` the
objects use, so a service knows what a filter may name without reading a row.

Why JSON in a string column rather than one Arrow column per field: metadata is whatever the caller
gave ``EmbeddingIndex.add`` (rows with differing keys, nested values), and a schema fixed by the first
chunk would refuse a later chunk with a new key or a label that is an int in one set and a string in
another. A lookup parses one short string; a filter on a field parses the column once, on its first use.

Reading maps the file (``pyarrow.memory_map``): the operating system pages rows in as they are asked
for. What stays in memory is the ``id`` column (8 bytes an item, for the id -> row binary search) and
one small object per record batch. ``MetadataView`` is what an ``EmbeddingIndex`` holds: the mapped
file of a loaded index, plus the items added and the ids removed since, which a save writes out in id
order without parsing the rows it copies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

METADATA = "metadata.arrow"
BATCH_ROWS = 65536  # rows per record batch when the caller hands rows one by one


def _schema(fields: list[str]):
    import pyarrow as pa

    return pa.schema(
        [pa.field("id", pa.int64(), nullable=False), pa.field("metadata", pa.large_string(), nullable=False)],
        metadata={"align.fields": json.dumps(sorted(fields))},
    )


def write_metadata(path: Path, batches: Iterable[tuple[np.ndarray, list[str]]], fields: Iterable[str]) -> int:
    """Write ``(ids, json strings)`` batches (ids ascending across batches) to ``path``; returns the
    row count. ``fields``: every key the JSON objects use (recorded in the schema). Raises
    ``ValueError`` when the ids are not strictly ascending (a lookup binary-searches them)."""
    import pyarrow as pa

    schema = _schema(list(fields))
    count, last = 0, None
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for ids, texts in batches:
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) != len(texts):
                raise ValueError(f"metadata batch of {len(ids)} ids but {len(texts)} records")
            if not len(ids):
                continue
            if np.any(np.diff(ids) <= 0) or (last is not None and ids[0] <= last):
                raise ValueError("metadata ids must be written in strictly ascending order")
            last = int(ids[-1])
            writer.write_batch(pa.record_batch([pa.array(ids), pa.array(texts, pa.large_string())], schema=schema))
            count += len(ids)
    return count


def rows_to_batches(items: Iterable[tuple[int, str]], rows: int = BATCH_ROWS) -> Iterator[tuple[np.ndarray, list]]:
    """``(id, json)`` pairs in id order -> batches of ``rows`` for ``write_metadata``."""
    ids, texts = [], []
    for i, text in items:
        ids.append(i)
        texts.append(text)
        if len(ids) == rows:
            yield np.asarray(ids, np.int64), texts
            ids, texts = [], []
    if ids:
        yield np.asarray(ids, np.int64), texts


class ArrowMetadata:
    """A ``metadata.arrow`` file, memory-mapped: ``get(id)``, ``ids``, ``fields``, ``batches()``."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path = Path(path)
        self._file = pa.memory_map(str(self.path), "r")
        try:
            reader = pa.ipc.open_file(self._file)
        except pa.ArrowInvalid as err:
            raise ValueError(f"{self.path.name} is not an Arrow file: {err}") from None
        names = reader.schema.names
        if names != ["id", "metadata"]:
            raise ValueError(f"{self.path.name} has columns {names}, expected ['id', 'metadata']")
        self._batches = [reader.get_batch(b) for b in range(reader.num_record_batches)]
        parts = [b.column(0).to_numpy() for b in self._batches]
        self.ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
        self._starts = np.cumsum([0] + [len(p) for p in parts])
        raw = (reader.schema.metadata or {}).get(b"align.fields", b"[]")
        self.fields: list[str] = json.loads(raw)
        if len(self.ids) > 1 and np.any(np.diff(self.ids) <= 0):
            raise ValueError(f"{self.path.name}: ids are not in ascending order")

    def __len__(self) -> int:
        return len(self.ids)

    def _position(self, id_: int) -> int | None:
        pos = int(np.searchsorted(self.ids, id_))
        return pos if pos < len(self.ids) and self.ids[pos] == id_ else None

    def text(self, id_: int) -> str | None:
        """The JSON of item ``id_`` as stored, or None when it has no row."""
        pos = self._position(int(id_))
        if pos is None:
            return None
        b = int(np.searchsorted(self._starts, pos, side="right")) - 1
        return self._batches[b].column(1)[pos - int(self._starts[b])].as_py()

    def batches(self) -> Iterator[tuple[np.ndarray, list[str]]]:
        """``(ids, json strings)`` per record batch, in id order, unparsed."""
        for batch, start, stop in zip(self._batches, self._starts[:-1], self._starts[1:]):
            yield self.ids[start:stop], batch.column(1).to_pylist()


class MetadataView:
    """What an ``EmbeddingIndex`` holds: a loaded file (``base``, or None), the items added since
    (``added``: id -> dict) and the ids removed since. Items with empty metadata need no entry."""

    def __init__(self, base: ArrowMetadata | None = None) -> None:
        self.base = base
        self.added: dict[int, dict] = {}
        self.removed: set[int] = set()

    def get(self, id_: int, default: Any = None) -> Any:
        id_ = int(id_)
        if id_ in self.added:
            return self.added[id_]
        if self.base is None or id_ in self.removed:
            return default
        text = self.base.text(id_)
        return json.loads(text) if text else default

    def update(self, pairs: Iterable[tuple[int, dict]]) -> None:
        for i, meta in pairs:
            self.added[int(i)] = meta
            self.removed.discard(int(i))

    def remove(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.added.pop(int(i), None)
            self.removed.add(int(i))

    @property
    def fields(self) -> list[str]:
        """Every key the items' metadata use (the file's recorded list, plus the added items')."""
        names = set(self.base.fields) if self.base is not None else set()
        for meta in self.added.values():
            names.update(meta)
        return sorted(names)

    def batches(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """``(ids, json strings)`` batches for every id of ``ids`` (sorted; the index's), in id order:
        the file's rows copied unparsed where they are still in the index, the added ones encoded."""
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        base_ids = self.base.ids if self.base is not None else np.empty(0, np.int64)
        if not self.added and np.array_equal(ids, base_ids):  # unchanged (a fresh build): copied as it is,
            yield from self.base.batches()  # without a membership test per batch (seconds at 10M items)
            return
        newer = ids[~np.isin(ids, base_ids, assume_unique=True)] if len(base_ids) else ids
        if len(newer) and len(base_ids) and newer[0] < base_ids[-1]:  # interleaved ids: one by one
            yield from rows_to_batches((int(i), self._json(int(i))) for i in ids)
            return
        if self.base is not None:
            for part, texts in self.base.batches():
                keep = np.isin(part, ids, assume_unique=True)
                changed = [j for j, i in enumerate(part.tolist()) if i in self.added]
                for j in changed:
                    texts[j] = _dumps(self.added[int(part[j])])
                if keep.any():
                    yield part[keep], [t for t, k in zip(texts, keep) if k]
        yield from rows_to_batches((int(i), self._json(int(i))) for i in newer)

    def _json(self, id_: int) -> str:
        return _dumps(self.get(id_, {}) or {})


def _dumps(meta: dict) -> str:
    return json.dumps(meta, ensure_ascii=False, sort_keys=False)
