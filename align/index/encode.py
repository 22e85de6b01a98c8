"""A dataset's rows of one modality encoded into index chunks, a chunk at a time, from a table or a
stream, by one process or by each of several (``align/index/distributed.py``).

Rows are cut into chunks of ``CHUNK_ROWS``; with ``world`` processes, chunk ``b`` is process
``b % world``'s, so the processes' chunks interleave back into the dataset's order and an item's id
(``first_id`` + its row) does not depend on how many processes encoded it. A stream
(``streaming: true`` in ``--data``: datasets' own streaming, e.g. webdataset shards) is numbered in
the order it is read; every process reads it whole and decodes only its own chunks' samples (reading
undecoded samples costs little next to encoding them).

Why 16,384 rows a chunk: one chunk of 512-dim float32 vectors is 32 MiB, what a build holds besides
the index's in-RAM part; chunks much smaller make the per-chunk Arrow record batches and tqdm updates
noticeable, much larger ones the memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from align.data.labels import class_names
from align.data.tables import Collator, PairedDataset
from align.errors import SampleError
from align.index.chunked import Chunk

CHUNK_ROWS = 16_384


def row_chunks(spec, table=None, chunk_rows: int = CHUNK_ROWS, rank: int = 0, world: int = 1):
    """``(row numbers, table of those rows)`` for this process's chunks of ``table`` or, when
    ``spec.streaming``, of the stream ``spec`` names. Rows of a stream that fail ``stream_row``'s
    checks are skipped under ``on_error: skip`` (counted in the yielded ``skipped`` of each chunk)."""
    if not spec.streaming:
        for b, start in enumerate(range(0, len(table), chunk_rows)):
            if b % world == rank:
                stop = min(start + chunk_rows, len(table))
                yield np.arange(start, stop), table.select(range(start, stop)), 0
        return
    yield from _stream_chunks(spec, chunk_rows, rank, world)


def _stream_chunks(spec, chunk_rows: int, rank: int, world: int):
    import datasets

    from align.data.streaming import open_stream, stream_row

    wanted = list(dict.fromkeys([*spec.columns.values(), *([spec.label_column] if spec.label_column else [])]))
    rows, numbers, skipped = [], [], 0
    position = -1
    for position, example in enumerate(open_stream(spec, "--data")):
        if (position // chunk_rows) % world == rank:
            try:
                row = stream_row(example, spec, "--data")
            except SampleError:
                if spec.on_error == "raise":
                    raise
                skipped += 1
            else:
                rows.append({**{c: row.get(c) for c in wanted}, "__key__": example.get("__key__")})
                numbers.append(position)
        if (position + 1) % chunk_rows == 0 and (rows or skipped):
            yield np.asarray(numbers, np.int64), datasets.Dataset.from_list(rows) if rows else None, skipped
            rows, numbers, skipped = [], [], 0
    if rows or skipped:
        yield np.asarray(numbers, np.int64), datasets.Dataset.from_list(rows) if rows else None, skipped


def row_metadata(row: dict, i: int, spec, modality: str, names) -> dict[str, Any]:
    """What an index item records of its row: row number, file path, label (by name), caption, and a
    streamed sample's key."""
    meta: dict[str, Any] = {"row": i}
    raw = row[spec.columns[modality]]
    if isinstance(raw, dict) and raw.get("path"):
        meta["path"] = raw["path"]
    elif isinstance(raw, str) and modality != "text":
        meta["path"] = raw
    if row.get("__key__") is not None:
        meta["key"] = row["__key__"]
    if spec.label_column:
        label = row[spec.label_column]
        meta["label"] = names[label] if names is not None and isinstance(label, int) else label
    if "text" in spec.columns:
        value = row[spec.columns["text"]]
        meta["caption"] = value[0] if isinstance(value, list) else value
    return meta


class EncodedChunks:
    """Iterate to encode ``chunks`` (``row_chunks``'s) with ``model``: one ``Chunk`` per chunk, ids
    ``first_id + row``. ``skipped`` counts rows that failed to load (``on_error: skip``)."""

    def __init__(
        self, model, chunks, spec, modality: str, batch_size: int = 256, progress: bool = True, first_id: int = 0
    ) -> None:
        self.model, self.chunks, self.spec, self.modality = model, chunks, spec, modality
        self.batch_size, self.progress, self.first_id = batch_size, progress, first_id
        self.skipped = 0

    def __iter__(self) -> Iterator[Chunk]:
        from tqdm.auto import tqdm

        spec, modality = self.spec, self.modality
        pre = {modality: self.model.adapters[modality].preprocessor()}
        device = next(self.model.parameters()).device
        bar = tqdm(desc=f"encode {modality}", unit=" rows", disable=not self.progress)
        names = spec.label_names if spec.streaming and isinstance(spec.label_names, list) else None
        for numbers, table, skipped in self.chunks:
            self.skipped += skipped
            if table is None:
                continue
            if not spec.streaming and spec.label_column:
                names = class_names(table, spec.label_column)
            vectors, ids, meta = self._encode(table, numbers, pre, device, names)
            bar.update(len(numbers))
            if len(ids):
                yield Chunk(vectors, ids, meta)
        bar.close()

    def _encode(self, table, numbers: np.ndarray, pre, device, names):
        import torch
        from accelerate.utils import send_to_device

        spec, modality = self.spec, self.modality
        columns, name = {modality: spec.columns[modality]}, f"data ({spec.source})"
        ds = PairedDataset(table, columns, pre, train=False, name=name, on_error=spec.on_error)
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, collate_fn=Collator(pre))
        parts, ids, meta = [], [], []
        for batch in loader:
            self.skipped += int(batch["skipped"])
            if not len(batch["index"]):
                continue
            with torch.no_grad():
                x = self.model.encode(modality, send_to_device(batch[modality], device))
            parts.append(x.float().cpu().numpy())
            for local in batch["index"].tolist():
                row = int(numbers[local])
                ids.append(self.first_id + row)
                meta.append(row_metadata(table[local], row, spec, modality, names))
        vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return vectors, np.asarray(ids, np.int64), meta


def encode_rows(
    model, table, spec, modality: str, width: int, batch_size: int = 256, progress: bool = True, first_id: int = 0
):
    """``table``'s ``modality`` column encoded by ``model`` to ``width`` dims, all in memory: (vectors
    [N, width], ids ``first_id + row``, metadata per row, rows skipped) — what ``align index add``
    appends (its rows are a change held in memory anyway)."""
    encoded = EncodedChunks(model, row_chunks(spec, table), spec, modality, batch_size, progress, first_id)
    chunks = list(encoded)
    if not chunks:
        return np.zeros((0, width), np.float32), np.empty(0, np.int64), [], encoded.skipped
    vectors = np.concatenate([c.vectors for c in chunks])
    ids = np.concatenate([c.ids for c in chunks])
    return vectors, ids, [m for c in chunks for m in c.metadata], encoded.skipped
