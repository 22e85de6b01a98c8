"""``accelerate launch -m align index build ...``: every process encodes its share of the rows, the
main process merges the shares into one index, equal to the one a single process builds.

Who encodes what: the rows' chunks go round the processes (``align.index.encode.row_chunks``: chunk
``b`` to process ``b % world``), so ids, which are row numbers, do not depend on the process count.
Each process spills its chunks to ``.<out>.shards/rank-<r>/`` beside ``--out`` (vectors and Arrow
metadata, ``align/index/chunked.py``) and records each chunk's first id and size in ``rank-<r>.json``;
after a barrier, the main process replays every process's chunks in id order into the build
(training, adding, scoring and saving as a single process does) and removes the shard folder.

The processes meet at two barriers (``PartialState.wait_for_everyone``: a gloo or NCCL barrier), one
after the shard folder is made and one when every share is written; a process that fails stops the
launch (``accelerate launch`` exits non-zero), and a main process that fails leaves no index folder
(the save is atomic).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from align.index.chunked import Chunk, Spill
from align.io.atomic import write_atomic


def process_world() -> tuple[int, int]:
    """``(rank, world size)`` when started by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` set
    above 1), else ``(0, 1)`` without touching torch.distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes


def shard_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.shards"


def encode_share(encoded, width: int, folder: Path, rank: int) -> None:
    """Spill this process's encoded chunks to ``folder/rank-<rank>`` and record their ids' layout."""
    spill, layout = Spill(folder / f"rank-{rank}", width), []
    for chunk in encoded:
        spill.append(chunk)
        layout.append([int(chunk.ids[0]), len(chunk.ids)])
    spill.close()
    record = {"chunks": layout, "skipped": int(getattr(encoded, "skipped", 0)), "dim": width}
    write_atomic(folder / f"rank-{rank}.json", json.dumps(record))


class MergedShares:
    """Every process's spilled chunks as one stream of ``Chunk``s in id order (what ``build_index``
    takes as ``chunks``); ``skipped`` sums the processes' skipped rows."""

    def __init__(self, folder: Path, world: int) -> None:
        self.folder, self.world = Path(folder), world
        self.records = []
        for rank in range(world):
            path = self.folder / f"rank-{rank}.json"
            if not path.is_file():
                raise FileNotFoundError(f"process {rank} wrote no share ({path}): did it fail?")
            self.records.append(json.loads(path.read_text()))
        self.skipped = sum(r["skipped"] for r in self.records)

    def __iter__(self) -> Iterator[Chunk]:
        from align.index.metadata import METADATA, ArrowMetadata

        chunks = [(first, rank, j) for rank, r in enumerate(self.records) for j, (first, _) in enumerate(r["chunks"])]
        order = sorted(chunks)
        metas = [ArrowMetadata(self.folder / f"rank-{rank}" / METADATA).batches() for rank in range(self.world)]
        files = [open(self.folder / f"rank-{rank}" / "vectors.f32", "rb") for rank in range(self.world)]
        try:
            for _first, rank, j in order:
                dim, size = self.records[rank]["dim"], self.records[rank]["chunks"][j][1]
                vectors = np.fromfile(files[rank], dtype=np.float32, count=size * dim).reshape(size, dim)
                ids, texts = next(metas[rank])  # one record batch per chunk, in the order they were spilled
                yield Chunk(vectors, ids, [json.loads(t) for t in texts])
        finally:
            for f in files:
                f.close()


def remove_shares(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def encoded_shares(
    checkpoint, spec, modality: str, out: str | Path, dim: int | None, batch_size: int, chunk_rows: int | None = None
) -> MergedShares | None:
    """Run this process's part of a distributed build: encode its chunks into the shard folder beside
    ``out``; on the main process, every process's chunks once all are written (the caller builds the
    index from them and calls ``remove_shares``), on the others None (their part is done)."""
    from accelerate import PartialState

    from align.data.tables import load_table
    from align.index.encode import CHUNK_ROWS, EncodedChunks, row_chunks
    from align.model.checkpoint import load_model, resolve_checkpoint

    state = PartialState()
    rank, world = state.process_index, state.num_processes
    folder = shard_folder(out)
    if state.is_main_process:
        remove_shares(folder)  # a killed earlier launch's
        folder.mkdir(parents=True)
    state.wait_for_everyone()
    model, cfg = load_model(resolve_checkpoint(checkpoint))
    model.output_dim = dim
    table = None if spec.streaming else load_table(spec, "data")
    chunks = row_chunks(spec, table, chunk_rows or CHUNK_ROWS, rank, world) if modality in model.adapters else []
    encoded = EncodedChunks(model, chunks, spec, modality, batch_size, progress=state.is_main_process)
    encode_share(encoded, dim or cfg.model.embed_dim, folder, rank)
    state.wait_for_everyone()
    return MergedShares(folder, world) if state.is_main_process else None
