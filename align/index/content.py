"""``content.json``: what an index folder holds, recorded when it is saved, beside (not inside) its manifest.

Why: ``manifest.json`` catches a damaged file (a flipped bit, a truncated copy), but it can only vouch for
itself: rebuild ``index.faiss`` with other vectors (or swap two captions in ``metadata.jsonl``), recompute
``manifest.json`` over the folder with align's own writer, and every checksum holds while the index returns
other items than it was built with. This record binds the index to its content. It holds

- ``count`` and ``dim``: the number of vectors and their dimension,
- ``model`` and ``modality``: the checkpoint identity (``align.index.build.model_identity``) and the
  modality the vectors embed,
- ``index_sha256``: the sha256 of ``index.faiss`` as written. It is the digest of the vectors: the file's
  bytes determine every vector and id, for every index type (a digest of reconstructed vectors would be
  lossy for PQ, need a direct map for IVF, and cost another pass over them; this one costs nothing at
  load, where the file is hashed for its manifest entry anyway),
- ``metadata_sha256``: the sha256 of the metadata file as written (``metadata.arrow`` from index format 4,
  ``metadata.jsonl`` before): every id and its metadata (caption, label, path, row), in id order,
- ``lists_sha256``: the sha256 of ``lists.ivfdata`` for an index whose inverted lists live on disk (where
  its vectors are; ``index.faiss`` then holds only their directory), else null,
- ``record_sha256``: the sha256 of the fields above, so a hand edit of one of them is named as such.

``align.index.files.load_folder`` checks it against what it actually read: faiss's ``ntotal`` and ``d``, the
sha256 of ``index.faiss``, the number of metadata records and the sha256 of the bytes it parsed them from,
and manifest.json's own ``dim``, ``count``, ``model`` and ``modality``.

What that guarantees, and what not:

- Caught: a file replaced or edited so that it no longer fits the rest of the folder: a rebuilt
  ``index.faiss`` (other vectors, another count), an edited ``metadata.jsonl`` (swapped captions, a hidden
  item), a ``manifest.json`` naming another model, even when manifest.json was recomputed over the change,
  since that leaves this record describing the index that was built. A hand-edited ``content.json`` is
  caught by its own digest (and by the manifest's entry for it, unless that was recomputed too).
- Not caught: a forger who also rewrites ``content.json`` consistently. Its digest needs no secret (align's
  own code computes it), so someone who can rewrite every file of the folder can forge any index; whoever
  can write the folder is trusted. A folder stripped of content.json whose manifest says format 2 loads as
  one written by an older align, with a warning that it is checked against its manifest only.
- Trusted: a file is not swapped between being hashed and being read while it loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CONTENT = "content.json"
RECORD_FORMAT = "align.index.content/v1"
_FIELDS = {"count": int, "dim": int, "model": (str, type(None)), "modality": (str, type(None))}
_DIGESTS = ("index_sha256", "metadata_sha256")


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_record(
    folder: Path,
    *,
    count: int,
    dim: int,
    model: str | None,
    modality: str | None,
    index_sha256: str,
    metadata_sha256: str,
    lists_sha256: str | None = None,
) -> dict[str, Any]:
    """Write ``folder/content.json`` (inside the save's temp folder, so it is renamed into place with the
    rest) and return it; the sha256s are of ``index.faiss`` and ``metadata.jsonl`` as just written."""
    fields = {
        "format": RECORD_FORMAT,
        "count": int(count),
        "dim": int(dim),
        "model": model,
        "modality": modality,
        "index_sha256": index_sha256,
        "metadata_sha256": metadata_sha256,
    }
    if lists_sha256 is not None:
        fields["lists_sha256"] = lists_sha256
    record = {**fields, "record_sha256": _digest(fields)}
    (folder / CONTENT).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def read_record(folder: Path) -> dict[str, Any]:
    """``folder/content.json``, its fields' types and its own digest checked. Raises ``ValueError`` whose
    message starts with ``content.json`` and says what is wrong (the caller names the folder)."""
    try:
        record = json.loads((folder / CONTENT).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{CONTENT} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        what = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{CONTENT} is not a content record of format {RECORD_FORMAT!r} (got {what!r})")
    for name, kind in _FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{CONTENT}: {name!r} is {value!r}, not a {_kind_name(kind)}")
    for name in _DIGESTS:
        if not isinstance(record.get(name), str) or len(record[name]) != 64:
            raise ValueError(f"{CONTENT}: {name!r} is {record.get(name)!r}, not a sha256")
    lists = record.get("lists_sha256")
    if lists is not None and (not isinstance(lists, str) or len(lists) != 64):
        raise ValueError(f"{CONTENT}: 'lists_sha256' is {lists!r}, not a sha256")
    fields = {k: v for k, v in record.items() if k != "record_sha256"}
    if record.get("record_sha256") != _digest(fields):
        raise ValueError(
            f"{CONTENT} was edited after the index was saved: its fields do not hash to its record_sha256, "
            f"so it cannot vouch for index.faiss and metadata.jsonl"
        )
    return record


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def check_index(record: dict[str, Any], count: int, dim: int, index_sha256: str) -> None:
    """The faiss index actually read (``ntotal``, ``d``, and the sha256 of its file, already verified
    against the file) against the record. Raises ``ValueError`` naming index.faiss and what disagrees."""
    if count != record["count"]:
        raise ValueError(
            f"index.faiss holds {count} vectors but {CONTENT} describes {record['count']} items: it was "
            f"replaced after the index was built"
        )
    if dim != record["dim"]:
        raise ValueError(
            f"index.faiss holds vectors of dim {dim} but {CONTENT} describes dim {record['dim']}: it was "
            f"replaced after the index was built"
        )
    if index_sha256 != record["index_sha256"]:
        raise ValueError(
            f"index.faiss is not the file this index was built with (same count and dim, but its sha256 "
            f"{index_sha256[:16]}... is not the {record['index_sha256'][:16]}... {CONTENT} recorded): its "
            f"vectors were replaced, and a manifest.json recomputed over it does not make it the index"
        )


def check_lists(record: dict[str, Any], lists_sha256: str | None) -> None:
    """The on-disk lists file actually read (its sha256, or None for none) against the record."""
    want = record.get("lists_sha256")
    if want is None and lists_sha256 is None:
        return
    if want is None or lists_sha256 is None:
        has, says = ("has" if lists_sha256 else "has no"), ("records one" if want else "records none")
        raise ValueError(f"the folder {has} lists.ivfdata but {CONTENT} {says}: it is not the index that was built")
    if lists_sha256 != want:
        raise ValueError(
            f"lists.ivfdata is not the file this index was built with (its sha256 {lists_sha256[:16]}... is not "
            f"the {want[:16]}... {CONTENT} recorded): the vectors on disk were replaced"
        )


def check_metadata(record: dict[str, Any], rows: int, metadata_sha256: str, name: str = "metadata.jsonl") -> None:
    """The metadata actually read (its record count, the sha256 of the bytes they were parsed from)
    against the record. Raises ``ValueError`` naming metadata.jsonl and what disagrees."""
    if rows != record["count"]:
        raise ValueError(f"{name} holds {rows} records but {CONTENT} describes {record['count']} items")
    if metadata_sha256 != record["metadata_sha256"]:
        raise ValueError(
            f"{name} is not the file this index was built with (same ids, but its sha256 "
            f"{metadata_sha256[:16]}... is not the {record['metadata_sha256'][:16]}... {CONTENT} recorded): "
            f"its captions, labels or paths were edited, and a manifest.json recomputed over it does not "
            f"make them the index's"
        )


def check_manifest(record: dict[str, Any], manifest: dict[str, Any]) -> None:
    """manifest.json's own description of the index (dim, count, model, modality) against the record,
    so a manifest rewritten to name another checkpoint is refused. Raises ``ValueError``."""
    for name in _FIELDS:
        if manifest.get(name) != record[name]:
            raise ValueError(f"manifest.json says {name} {manifest.get(name)!r} but {CONTENT} records {record[name]!r}")
