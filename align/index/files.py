"""Saving and loading an ``EmbeddingIndex`` folder (``align/index/embedding_index.py``): ``index.faiss``
(and ``lists.ivfdata`` for lists on disk), ``metadata.arrow``, ``content.json`` (what the index holds:
count, dim, model, and the sha256 of the other files, see ``align/index/content.py``) and
``manifest.json`` with the bytes and sha256 of every file (``align.io.manifest``), written atomically
(``align.io.atomic``) under the folder's lock file and cross-checked on load (see
``align/index/embedding_index.py``'s docstring).

Format versions: 1 checksummed index.faiss only; 2 every file; 3 adds content.json, without which a
rebuilt index.faiss or an edited metadata.jsonl under a recomputed manifest.json went unnoticed; 4 keeps
metadata in a memory-mapped Arrow file and may keep IVF lists on disk (``align/index/writer.py``). 1 and 2
still load, with a warning that they are checked against their manifest only; 3 loads as it is. Saves
write format 4."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from align.errors import AlignError
from align.index import content
from align.index.metadata import METADATA, ArrowMetadata, MetadataView
from align.index.writer import FORMAT_VERSION, LISTS, save_lock, write_contents
from align.io.atomic import atomic_folder
from align.io.manifest import ManifestError, read_manifest, verify_file

# 4: metadata.arrow (memory-mapped) replaces metadata.jsonl, and IVF lists may live on disk in
# lists.ivfdata; 3: content.json binds index.faiss and metadata.jsonl to what was built (2: the
# manifest's "files" holds the size and sha256 of every file beside it; 1: index.faiss's only).
READABLE_VERSIONS = (1, 2, 3, 4)
__all__ = ["FORMAT_VERSION", "IndexFormatError", "check_save_target", "load_folder", "save_folder"]


class IndexFormatError(AlignError, ValueError):
    """A saved index folder is incomplete, inconsistent, or not what the caller expected."""


def check_save_target(folder: str | Path, overwrite: bool, hint: str = "pass overwrite=True to replace it") -> None:
    """Raise ``FileExistsError`` if saving to ``folder`` is not allowed: a file is there, or a non-empty
    folder without ``overwrite``, or (even with ``overwrite``) a non-empty folder that is not an index,
    so a mistyped path never deletes someone's data. ``hint`` says how to allow it: the CLI passes its
    ``--overwrite`` flag, since it calls this before encoding anything."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; {hint}")
    if not (folder / "manifest.json").is_file():
        raise FileExistsError(
            f"{folder} is not empty and is not an index folder (no manifest.json): refusing to "
            f"replace it even when asked to overwrite; remove it yourself or choose another folder"
        )


def save_folder(idx, folder, *, model: str | None = None, modality: str | None = None, overwrite: bool = False) -> Path:
    """Write the index folder atomically (temp folder + rename) under the folder's lock file, so that
    of two concurrent saves with ``overwrite=False`` exactly one succeeds, and with ``overwrite=True``
    the folder ends up holding one complete index. An existing non-empty folder is only replaced with
    ``overwrite=True``, and only if it is an index folder (see ``check_save_target``). The files:
    ``align/index/writer.py``."""
    folder = Path(folder)
    model = model if model is not None else idx.model
    modality = modality if modality is not None else idx.modality
    check_save_target(folder, overwrite)  # fail fast, before waiting for the lock
    with save_lock(folder):
        check_save_target(folder, overwrite)  # the check that counts: nobody can save between it and rename
        with atomic_folder(folder, exists="replace") as tmp:  # check_save_target allowed any old one
            write_contents(tmp, idx, model=model, modality=modality)
    idx.model, idx.modality = model, modality
    return folder


def load_folder(
    cls,
    folder,
    *,
    expect_dim: int | None = None,
    expect_model: str | None = None,
    expect_modality: str | None = None,
    use_gpu: bool = True,
):
    """Load a folder written by ``save``: every file the manifest lists has its recorded size and sha256
    (so a damaged file is named), and index.faiss, the lists file, the metadata and manifest.json agree
    with each other and with content.json (so a file replaced or edited under a recomputed manifest is
    named too; what that does and does not catch: ``align/index/content.py``). ``cls``: the index class
    to build (``EmbeddingIndex``)."""
    folder = Path(folder)

    def fail(msg: str) -> IndexFormatError:
        return IndexFormatError(f"index folder {folder}: {msg}")

    if not folder.is_dir():
        raise fail("does not exist" if not folder.exists() else "is not a folder")
    if not (folder / "manifest.json").is_file():
        raise fail(
            "has no manifest.json, so it is not an index written by `align index build` / "
            "EmbeddingIndex.save (or it is an incomplete copy of one)"
        )
    try:  # files entries come back as {bytes, sha256} (format 2, 3, 4) or not at all (format 1)
        m = read_manifest(folder, require_files=False)
    except ManifestError as e:
        raise fail(f"manifest.json: {e.detail}") from None
    try:
        dim, count, spec = int(m["dim"]), int(m["count"]), str(m["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise fail(f"manifest.json is unreadable or lacks dim/count/spec: {e!r}") from e
    version = m.get("format_version")
    if version not in READABLE_VERSIONS:
        raise fail(f"format_version {version!r}, this code reads {READABLE_VERSIONS}")
    meta_name = METADATA if version >= 4 else "metadata.jsonl"
    on_disk = m.get("storage") == "ondisk"
    needed = ["index.faiss", meta_name] + ([LISTS] if on_disk else []) + ([content.CONTENT] if version >= 3 else [])
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    if version < 3:
        import warnings

        no_sums = "its manifest has no checksum of metadata.jsonl, and " if version == 1 else ""
        warnings.warn(
            f"index folder {folder}: saved by an older align (format {version}): {no_sums}it has no "
            f"{content.CONTENT}, so index.faiss and metadata.jsonl are checked against manifest.json only (one "
            f"rebuilt under a recomputed manifest would pass); re-save it to add one "
            f"(EmbeddingIndex.load(f).save(f, overwrite=True))",
            stacklevel=2,
        )
    if version == 1:  # checksummed index.faiss only
        files = {"index.faiss": {"sha256": m.get("index_sha256")}}
    else:
        files = m.get("files")  # read_manifest checked the entries and that they name plain files
        if not isinstance(files, dict) or not set(needed) <= set(files):
            raise fail(f'manifest.json\'s "files" must map {", ".join(sorted(needed))}, ... to {{bytes, sha256}}')

    def verify(name: str) -> None:
        try:
            verify_file(folder, name, files[name])
        except ManifestError as e:
            raise fail(f"{name}: {e.detail}") from None

    record = None
    if version >= 3:
        verify(content.CONTENT)
        try:
            record = content.read_record(folder)
        except ValueError as e:
            raise fail(str(e)) from None

    def check(step, *args) -> None:  # one of content.check_*: what was read against content.json
        if record is not None:
            try:
                step(record, *args)
            except ValueError as e:
                raise fail(str(e)) from None

    verify("index.faiss")  # before faiss parses it
    if on_disk:
        verify(LISTS)  # a truncated or damaged lists file is named before faiss maps it
    check(content.check_lists, files[LISTS]["sha256"] if on_disk else None)
    index = _read_faiss(folder, on_disk, fail)
    if index.d != dim:
        raise fail(f"manifest says dim {dim} but index.faiss has dim {index.d}")
    if index.ntotal != count:
        raise fail(f"manifest says count {count} but index.faiss holds {index.ntotal} vectors")
    check(content.check_index, int(index.ntotal), int(index.d), files["index.faiss"]["sha256"])
    out = cls(
        dim,
        spec,
        normalize=bool(m.get("normalize", True)),
        use_gpu=use_gpu,
        model=m.get("model"),
        modality=m.get("modality"),
        _index=index,
    )
    out.lists_path = folder / LISTS if on_disk else None
    out.build_report = m.get("build")
    if version >= 4:
        verify(METADATA)  # hashed whole before it is mapped: the digest is of what is read
        try:
            store = ArrowMetadata(folder / METADATA)
        except (ValueError, OSError) as e:
            raise fail(f"{METADATA}: {e}") from None
        meta_ids, view, digest = store.ids, MetadataView(store), files[METADATA]["sha256"]
    else:
        meta_ids, view, digest = _read_jsonl(folder, fail)
    if len(meta_ids) != count:
        raise fail(f"{meta_name} has {len(meta_ids)} records but manifest/index count is {count}")
    if not np.array_equal(np.asarray(meta_ids, dtype=np.int64), np.sort(out.ids)):
        raise fail(f"ids in {meta_name} do not match the ids stored in index.faiss")
    # after the record checks above, which say more precisely what is wrong; this catches the rest
    # (an edited label, path or caption keeps the record count and ids)
    for name in files:
        if name not in ("index.faiss", LISTS, METADATA, content.CONTENT):
            verify(name)
    check(content.check_metadata, len(meta_ids), digest, meta_name)  # edited under a recomputed manifest
    check(content.check_manifest, m)  # e.g. a manifest rewritten to name another model
    out._meta = view
    if (expect_dim is not None and expect_dim != dim) or (expect_model is not None and expect_model != out.model):
        raise fail(
            f"index built with a different embedding dim or model: it has dim {dim}, model "
            f"{out.model!r}; expected dim {expect_dim}, model {expect_model!r}"
        )
    if expect_modality is not None and expect_modality != out.modality:
        raise fail(f"index holds {out.modality!r} embeddings, expected {expect_modality!r}")
    return out


def _read_faiss(folder: Path, on_disk: bool, fail):
    """index.faiss as faiss reads it: an ``IndexIDMap2`` (flat codes, HNSW) or an IVF index holding its
    ids itself; on disk, its lists mapped from ``lists.ivfdata`` beside it."""
    import faiss

    try:
        index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else 0)
    except RuntimeError as e:
        raise fail(f"faiss cannot read index.faiss: {e}") from e
    if not isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVF)):
        raise fail(f"index.faiss holds {type(index).__name__}, expected IndexIDMap2 or an IVF index")
    lists = faiss.try_extract_index_ivf(index)
    is_on_disk = lists is not None and isinstance(
        faiss.downcast_InvertedLists(lists.invlists), faiss.OnDiskInvertedLists
    )
    if is_on_disk != on_disk:
        raise fail(f"manifest.json says storage {'ondisk' if on_disk else 'ram'} but index.faiss disagrees")
    return index


def _read_jsonl(folder: Path, fail) -> tuple[list[int], MetadataView, str]:
    """Formats 1-3: metadata.jsonl read whole, hashed as parsed (the digest is of what was read)."""
    meta_ids, view, digest = [], MetadataView(), hashlib.sha256()
    with open(folder / "metadata.jsonl", "rb") as f:
        for line_no, line in enumerate(f, 1):
            digest.update(line)
            try:
                rec = json.loads(line)
                meta_ids.append(int(rec["id"]))
            except (ValueError, KeyError, TypeError) as e:
                raise fail(f'metadata.jsonl line {line_no} is not a {{"id": ..., ...}} record: {e!r}') from e
            if rec.get("metadata"):
                view.added[meta_ids[-1]] = rec["metadata"]
    return meta_ids, view, digest.hexdigest()
