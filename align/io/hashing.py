"""One sha256 of a file, streamed: what manifests record and what loads check against."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 22  # 4 MiB: large enough to stream a multi-GB checkpoint fast, small enough to stay light


def sha256_file(path: str | os.PathLike[str] | Path) -> str:
    """Hex sha256 of the file's bytes, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
