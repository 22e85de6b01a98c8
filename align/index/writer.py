"""Writing an index folder's files (format 4) into a folder that is then renamed into place, and
changing a saved folder (``align index add`` / ``remove``) so that a killed change leaves the old one.

What a folder holds:

- ``index.faiss``: the faiss index (``faiss.write_index``);
- ``lists.ivfdata``: an IVF index's inverted lists on disk (faiss's ``OnDiskInvertedLists``), when it
  was built with them; ``index.faiss`` then holds only the coarse quantizer and the lists' directory,
  and is read with ``IO_FLAG_ONDISK_SAME_DIR`` so the lists are mapped from beside it wherever the
  folder was moved;
- ``metadata.arrow``: per-item metadata (``align/index/metadata.py``);
- ``content.json`` (``align/index/content.py``) and ``manifest.json`` (every file's bytes and sha256).

``align.index.lifecycle.update_folder`` makes a change the way a save is made: under the folder's lock
file, into a temporary
sibling, renamed onto the old folder only when complete. An on-disk index is changed from a copy of its
lists file inside that temporary folder, read into memory, changed there and written back compact
(faiss updates ``lists.ivfdata`` in place, which in the live folder would leave a half-changed index
behind a killed ``add``, and its in-place growth corrupts ids: ``EmbeddingIndex.move_lists_to_memory``).
So a change to an on-disk index needs memory for its lists, which the build and serving do not: not
yet an append past RAM.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from align.index import content
from align.index.metadata import METADATA, write_metadata
from align.io.manifest import file_entries, write_manifest

FORMAT_VERSION = 4
LISTS = "lists.ivfdata"
SAVE_LOCK_TIMEOUT_S = 3600.0  # a save waits this long for another save of the same folder to finish


def save_lock(folder: Path):
    """The lock every save and change of ``folder`` holds: ``<folder>.lock`` in its resolved parent, so
    every spelling of the path shares one; a timeout raises filelock's Timeout naming the lock file."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(folder.parent.resolve() / f"{folder.name}.lock", timeout=SAVE_LOCK_TIMEOUT_S)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (a build's lists file in its scratch folder beside the
    index: gigabytes not copied, and the scratch folder removed afterwards leaves the folder's link),
    else a copy. Nothing writes the file in place afterwards: a change copies it first
    (``align.index.lifecycle.update_folder``)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_contents(tmp: Path, idx, *, model: str | None, modality: str | None) -> dict[str, Any]:
    """Write ``idx`` (an ``EmbeddingIndex``) into the empty-or-partial folder ``tmp``: its lists file
    (copied there unless it already lives there), index.faiss, metadata.arrow, content.json and
    manifest.json. Returns the manifest."""
    import faiss

    names = ["index.faiss", METADATA]
    lists = None
    if idx.lists_path is not None:
        names.append(LISTS)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(idx.index).invlists)
        if Path(idx.lists_path).resolve() != (tmp / LISTS).resolve():
            _link_or_copy(Path(idx.lists_path), tmp / LISTS)
    # index.faiss records the lists file's name, which a load looks for beside it (IO_FLAG_ONDISK_SAME_DIR):
    # written as lists.ivfdata, then the index in memory goes on using (and growing) its own file
    own = lists.filename if lists is not None else None
    try:
        if lists is not None:
            lists.filename = str(tmp / LISTS)
        faiss.write_index(idx.index, str(tmp / "index.faiss"))
    finally:
        if lists is not None:
            lists.filename = own
    ids = idx.ids
    write_metadata(tmp / METADATA, idx._meta.batches(ids), idx._meta.fields)
    files = file_entries(tmp, names)
    content.write_record(
        tmp,
        count=len(idx),
        dim=idx.dim,
        model=model,
        modality=modality,
        index_sha256=files["index.faiss"]["sha256"],
        metadata_sha256=files[METADATA]["sha256"],
        lists_sha256=files[LISTS]["sha256"] if LISTS in files else None,
    )
    files = dict(sorted({**files, **file_entries(tmp, [content.CONTENT])}.items()))
    return write_manifest(
        tmp,
        {
            "format_version": FORMAT_VERSION,
            "dim": idx.dim,
            "count": len(idx),
            "spec": idx.spec,
            "storage": "ondisk" if idx.lists_path is not None else "ram",
            "metric": "inner_product",
            "normalize": idx.normalize,
            "model": model,
            "modality": modality,
            "nprobe": idx.nprobe,
            "efSearch": idx.efSearch,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "faiss_version": faiss.__version__,
            "index_sha256": files["index.faiss"]["sha256"],
            # what the chooser picked and why, and the built index scored (align/index/choose.py)
            "build": getattr(idx, "build_report", None),
        },
        files,
    )
