"""What a streaming checkpoint remembers of its shards' content, so a resume refuses a shard that was
rewritten in place under the same name (the shard list alone cannot tell)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from align.io.hashing import sha256_file

# The checkpoint remembers each shard's content: its size and its sha256 when all shards together are
# at most this many bytes (sha256 streams at roughly 1 GB/s here, so 4 GiB costs a few seconds once per
# run); past that, the sha256 of its first and last MiB, so a start never reads a whole corpus.
FULL_HASH_LIMIT = 4 << 30
EDGE_BYTES = 1 << 20


def edges_sha256(path: str) -> str:
    """sha256 of a file's first and last ``EDGE_BYTES``: a cheap fingerprint for very large shards."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def shard_fingerprints(shards: list[str] | None) -> dict[str, dict[str, Any]]:
    """Each local shard's size and content hash (full sha256 below ``FULL_HASH_LIMIT`` in all,
    else the first and last MiB): what a resumed run checks its shards against."""
    local = [s for s in shards or [] if os.path.isfile(s)]
    full = sum(os.path.getsize(s) for s in local) <= FULL_HASH_LIMIT
    return {
        s: {"bytes": os.path.getsize(s), **({"sha256": sha256_file(s)} if full else {"edges_sha256": edges_sha256(s)})}
        for s in local
    }


def changed_shard(then: dict[str, dict[str, Any]]) -> str | None:
    """The first shard whose content differs from the checkpoint's record, described; None if none."""
    for shard, record in then.items():
        if not os.path.isfile(shard):
            return f"shard {shard} is gone"
        size = os.path.getsize(shard)
        if size != record["bytes"]:
            return f"shard {shard} was rewritten ({record['bytes']} bytes then, {size} now)"
        kind, digest = ("sha256", sha256_file) if "sha256" in record else ("edges_sha256", edges_sha256)
        if digest(shard) != record[kind]:
            return f"shard {shard} was rewritten in place (same size, other content: {kind} differs)"
    return None
