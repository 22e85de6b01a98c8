"""Changing a saved index in place of rebuilding it: ``align index add`` appends a dataset's rows,
``align index remove`` drops items by id. Each change is made by ``update_folder``:
under the folder's lock, into a temporary copy renamed over the old folder only when complete, so a
killed ``add`` leaves the previous index whole and a service never loads a half-written one
(``align serve`` picks up the new folder by itself: ``align/serve/reload.py``).

An ``add`` encodes with the checkpoint the index records (or the one given, which must be the same
model: its weights' sha256 is compared, as a query does), at the index's own width, and gives the new
items ids after the largest id there (so ids stay unique and the metadata file stays in id order).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from align.data.tables import load_table
from align.index.build import IndexBuildError, model_identity
from align.index.embedding_index import EmbeddingIndex
from align.index.encode import encode_rows
from align.index.writer import LISTS, save_lock, write_contents
from align.io.atomic import atomic_folder
from align.model.checkpoint import load_model, resolve_checkpoint


def add_rows(
    folder: str | Path, spec, checkpoint: str | Path | None = None, batch_size: int = 256, progress: bool = True
) -> dict:
    """Encode ``spec``'s rows of the index's modality and append them to the index folder; returns
    ``{"added", "skipped", "first_id", "count"}``."""
    folder = Path(folder)
    current = EmbeddingIndex.load(folder)  # verified; read again under the lock by update_folder
    built_with, modality = current.model or "", current.modality
    if not checkpoint and not built_with:
        raise IndexBuildError(f"index {folder} does not record the model that built it; pass --checkpoint")
    ckpt = resolve_checkpoint(checkpoint or built_with.split(" ", 1)[-1])
    identity = model_identity(ckpt)
    if built_with and built_with.split(" ")[0] != identity.split(" ")[0]:
        raise IndexBuildError(
            f"--checkpoint {ckpt} is not the model index {folder} was built with ({built_with}); its "
            f"vectors would not be comparable: rebuild the index with it instead"
        )
    model, cfg = load_model(ckpt)
    if modality not in model.adapters:
        raise IndexBuildError(f"checkpoint {ckpt} has no modality '{modality}' (index {folder} holds {modality})")
    if modality not in spec.columns:
        raise IndexBuildError(f"--data names no column for the index's modality '{modality}' (columns: {spec.columns})")
    if current.dim > cfg.model.embed_dim:
        raise IndexBuildError(f"index {folder} has dim {current.dim}, the model embeds to {cfg.model.embed_dim}")
    model.output_dim = current.dim if current.dim < cfg.model.embed_dim else None
    first = int(current.ids.max()) + 1 if len(current) else 0
    table = None if spec.streaming else load_table(spec, "data")  # a stream is read by encode_rows
    vectors, ids, meta, skipped = encode_rows(model, table, spec, modality, current.dim, batch_size, progress, first)
    del current

    def append(index: EmbeddingIndex) -> int:
        start = int(index.ids.max()) + 1 if len(index) else 0
        if start != first:  # another add landed while we encoded: shift ours past it
            shifted = ids - first + start
        else:
            shifted = ids
        index.add(vectors, ids=shifted, metadata=meta)
        return start

    start = update_folder(folder, append)
    return {"added": len(ids), "skipped": skipped, "first_id": start, "count": len(EmbeddingIndex.load(folder))}


def remove_ids(folder: str | Path, ids) -> dict:
    """Remove the items with these ids from the index folder; returns ``{"removed", "count"}``. An id
    that is not there is an error naming it (nothing is removed)."""
    ids = np.asarray(list(ids), dtype=np.int64)
    if not len(ids):
        raise IndexBuildError("--ids: give at least one id")

    def drop(index: EmbeddingIndex) -> int:
        try:
            removed = index.remove(ids)
        except ValueError as e:
            raise IndexBuildError(f"index {folder}: {e}") from None
        return removed

    removed = update_folder(folder, drop)
    return {"removed": removed, "count": len(EmbeddingIndex.load(folder))}


def update_folder(folder: str | Path, change: Callable[[Any], Any], *, cls=None):
    """Load the index folder ``folder`` (verified), apply ``change(index)`` and write the result over
    it atomically under its lock file; returns what ``change`` returned. An on-disk index is loaded from
    a copy of its files in the temporary folder, so the change never touches the live one. A change
    that raises (or a kill) leaves ``folder`` as it was."""
    cls = cls or EmbeddingIndex
    folder = Path(folder)
    with save_lock(folder):
        current = cls.load(folder)  # verified, under the lock: what we change is what is there
        with atomic_folder(folder, exists="replace") as tmp:
            on_disk = current.lists_path is not None
            if on_disk:  # changed in memory from a copy (the live file is never opened for writing)
                for name in ("index.faiss", LISTS):
                    shutil.copyfile(folder / name, tmp / name)
                current = cls.open_files(tmp, current)  # the same index, its lists now the copy in tmp
                current.move_lists_to_memory()
                (tmp / LISTS).unlink()
            result = change(current)
            if on_disk:
                current.move_lists_to_disk(tmp / LISTS)  # written compact, where the folder keeps it
            write_contents(tmp, current, model=current.model, modality=current.modality)
    return result
