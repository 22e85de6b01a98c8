"""Writing webdataset tar shards (the img2dataset layout) from rows or from a config's dataset.

A sample is a run of tar members sharing a key, ``KEY.EXT`` side by side: encoded media (``.wav``,
``.flac``, ``.png``, ``.jpg``) as their bytes, a caption as ``.txt``, metadata (the label as a class
id, a speaker, a take) as ``.json``; shards are ``PREFIX-000000.tar``, ... of ``shard_size``
samples, and ``PREFIX.shards.json`` beside them records each shard's sample count (what a truncated
shard lost is then a number, ``align/data/shard_truncation.py``; a glob of ``PREFIX-*.tar`` never
matches it). datasets' ``webdataset`` builder reads them, as a stream (``streaming: true``,
``align/data/streaming.py``) or whole. From the checkout root::

    align shards configs/fsdd-audio-text.yaml runs/shards --prefix fsdd --shard-size 225

writes that config's ``data.train`` (FSDD's 2,700 training takes, 12 shards) as ``runs/shards/fsdd-*.tar``,
which ``configs/fsdd_shards.yaml`` streams (the command is ``align.app.train_commands.shards``).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from align.io.atomic import atomic_file

MEDIA_EXT = {"Image": "png", "Audio": "wav"}  # a table's in-memory media (no file name to take one from)


def _encode(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    return json.dumps(value).encode()


def write_shards(
    rows: Iterable[dict[str, Any]], out_dir: str | Path, shard_size: int, prefix: str = "shard"
) -> list[Path]:
    """Write samples ``{"__key__": str, EXT: value, ...}`` as tar shards of ``shard_size``: bytes as
    they are (encoded media), str as UTF-8 (``.txt``), numpy arrays as ``.npy``, anything else as
    JSON. Each shard is written under a temporary name and renamed, so a glob never matches a half
    shard; keys must be unique and free of '.' and '/' (webdataset splits the key off there)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, paths, seen, counts = iter(rows), [], set(), {}
    for index in itertools.count():
        chunk = list(itertools.islice(rows, shard_size))
        if not chunk:
            write_counts(out / f"{prefix}{COUNTS_SUFFIX}", counts)
            return paths
        path = out / f"{prefix}-{index:06d}.tar"
        # a glob never matches a half shard: written under a .tmp- name, renamed when whole
        with atomic_file(path, perms=0o644) as tmp, open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            for row in chunk:
                key = str(row["__key__"])
                if "." in key or "/" in key or key in seen:
                    raise ValueError(f"sample key {key!r}: keys must be unique and hold no '.' or '/'")
                seen.add(key)
                for ext, value in row.items():
                    if ext != "__key__" and value is not None:
                        data = _encode(value)
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        paths.append(path)
        counts[path.name] = len(chunk)
    return paths


COUNTS_SUFFIX = ".shards.json"


def write_counts(path: Path, counts: dict[str, int]) -> None:
    """``{"version": 1, "samples": {shard file name: sample count}}``, written whole."""
    with atomic_file(path, perms=0o644) as tmp:
        Path(tmp).write_text(json.dumps({"version": 1, "samples": counts}, indent=1) + "\n")


def recorded_count(shard: str | Path) -> int | None:
    """The sample count ``align shards`` recorded for ``shard`` (from any ``*.shards.json`` beside it
    naming it), or None when none does."""
    shard = Path(shard)
    for record in sorted(shard.parent.glob(f"*{COUNTS_SUFFIX}")):
        try:
            samples = json.loads(record.read_text()).get("samples", {})
        except (OSError, ValueError, AttributeError):
            continue  # an unreadable record only means the count stays unknown
        count = samples.get(shard.name) if isinstance(samples, dict) else None
        if isinstance(count, int) and count >= 0:
            return count
    return None


def table_rows(table, spec) -> Iterator[dict[str, Any]]:
    """A loaded table's rows as shard samples: each modality column a member (a media file's bytes
    under its extension, in-memory media as .png / .wav, text or a caption list's first caption as
    .txt), every other plain column (the label as a class id, a speaker, a take) in .json. The key
    is the media file's name without extension, else the row number."""
    modality_columns = set(spec.columns.values())
    for i, row in enumerate(table):
        sample: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        key = None
        for col, value in row.items():
            if col not in modality_columns:
                if value is None or isinstance(value, (bool, int, float, str)):
                    meta[col] = value
                continue
            path = (
                value.get("path")
                if isinstance(value, dict)
                else value
                if isinstance(value, str) and os.path.isfile(value)
                else None
            )
            if path is not None or isinstance(value, dict):
                ext = (
                    Path(path).suffix.lstrip(".").lower()
                    if path
                    else MEDIA_EXT.get(type(table.features[col]).__name__, "bin")
                )
                data = value.get("bytes") if isinstance(value, dict) else None
                member, value = ext, data if data is not None else Path(path).read_bytes()
                key = key or (Path(path).stem.replace(".", "_") if path else None)
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                member, value = "txt", value[0]
            else:
                member = "txt" if isinstance(value, str) else "npy"
                value = value if isinstance(value, str) else np.asarray(value)
            sample[f"{col}.{member}" if member in sample else member] = value
        if meta:
            sample["json"] = meta
        yield {"__key__": key or f"{i:08d}", **sample}
