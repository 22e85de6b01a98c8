"""One manifest for every folder align writes and later trusts (checkpoints, index folders).

``manifest.json`` holds the writer's own fields (format, step, dim, ...) and ``files``: for every
file beside it, ``{"bytes": <size>, "sha256": <hex>}``. Reading also accepts what earlier versions
wrote: checkpoints recorded ``size`` instead of ``bytes``, and entries with only a ``sha256`` (an
index folder of format 1). Every error names the file it is about.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.io.atomic import write_atomic
from align.io.hashing import sha256_file

MANIFEST = "manifest.json"
# Set (to 1) by ``align --trust-unverified``: a checkpoint with no manifest loads, with a warning,
# instead of being refused as unverifiable.
TRUST_UNVERIFIED_ENV = "ALIGN_TRUST_UNVERIFIED"


class ManifestError(AlignError, ValueError):
    """A manifest is unreadable, or a file it lists is missing or damaged. ``path``: the file the
    message is about; ``detail``: what is wrong with it (the message is ``"<path>: <detail>"``)."""

    def __init__(self, path: str | os.PathLike[str], detail: str):
        self.path, self.detail = Path(path), detail
        super().__init__(f"{self.path}: {detail}")


def file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of one file."""
    return {"bytes": os.stat(path).st_size, "sha256": sha256_file(path)}


def file_entries(folder: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Entries of ``names`` in ``folder`` (default: every file there but the manifest), sorted by name."""
    folder = Path(folder)
    if names is None:
        names = (p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    return {name: file_entry(folder / name) for name in sorted(names)}


def write_manifest(
    folder: str | os.PathLike[str], fields: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Write ``folder/manifest.json`` (atomically): ``fields`` plus ``files`` (default: an entry for
    every other file in ``folder``, see ``file_entries``). Returns what was written."""
    folder = Path(folder)
    manifest = {**fields, "files": dict(files) if files is not None else file_entries(folder)}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _entry(name: Any, raw: Any) -> dict[str, Any]:
    if not isinstance(name, str) or name != Path(name).name or name in ("", ".", "..", MANIFEST):
        raise ValueError(f"{name!r} is not the plain name of a file beside the manifest")
    if not isinstance(raw, dict) or not isinstance(raw.get("sha256"), str):
        raise ValueError(f"entry {name!r} is not a map with a sha256")
    size = raw.get("bytes", raw.get("size"))  # 'size': checkpoints written before the schemas were one
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ValueError(f"entry {name!r} has bytes {size!r}, not a file size")
    return {"bytes": size, "sha256": raw["sha256"]}


def read_manifest(folder: str | os.PathLike[str], *, require_files: bool = True) -> dict[str, Any] | None:
    """``folder/manifest.json`` as a dict, or None if there is none. Its ``files`` entries come back
    as ``{"bytes": int | None, "sha256": str}`` whichever schema wrote them; with ``require_files``
    a manifest without ``files`` is an error. Raises ``ManifestError`` naming the manifest."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        if "files" in manifest or require_files:
            files = manifest["files"]
            if not isinstance(files, dict):
                raise ValueError("'files' is not a map of file name -> {bytes, sha256}")
            manifest["files"] = {name: _entry(name, raw) for name, raw in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(path, f"unreadable manifest ({type(err).__name__}: {err})") from None
    return manifest


def verify_file(folder: str | os.PathLike[str], name: str, entry: Mapping[str, Any] | None) -> None:
    """Check one file against its manifest entry: listed, present, its size (when recorded) and
    sha256. Raises ``ManifestError`` naming the file and what is wrong."""
    path = Path(folder) / name
    if entry is None:
        raise ManifestError(path, f"not listed in {Path(folder) / MANIFEST}, so it cannot be verified")
    want_bytes, want_sha = entry.get("bytes"), entry.get("sha256")
    if not path.is_file():
        listed = f" with {want_bytes} bytes" if want_bytes is not None else ""
        raise ManifestError(path, f"missing (listed in {MANIFEST}{listed})")
    size = path.stat().st_size
    if want_bytes is not None and size != want_bytes:
        how = "empty" if size == 0 else "truncated" if size < want_bytes else "grown"
        raise ManifestError(path, f"{size} bytes where {MANIFEST} says {want_bytes} ({how})")
    digest = sha256_file(path)
    if digest != want_sha:
        raise ManifestError(
            path, f"content is damaged (sha256 {digest[:16]}... does not match {MANIFEST}'s {str(want_sha)[:16]}...)"
        )


def verify_files(folder: str | os.PathLike[str], names: Iterable[str], manifest: Mapping[str, Any]) -> None:
    """``verify_file`` for each of ``names`` against ``manifest`` (as ``read_manifest`` returns it)."""
    files = manifest.get("files") or {}
    for name in names:
        verify_file(folder, name, files.get(name))
