"""Writing webdataset tar shards (the img2dataset layout) from rows or from a config's dataset.

A sample is a run of tar members sharing a key, ``KEY.EXT`` side by side: encoded media (``.wav``,
``.flac``, ``.png``, ``.jpg``) as their bytes, a caption as ``.txt``, metadata (the label as a class
id, a speaker, a take) as ``.json``; shards are ``PREFIX-000000.tar``, ... of ``shard_size``
samples. datasets' ``webdataset`` builder reads them, as a stream (``streaming: true``,
``align/data/streaming.py``) or whole. From the checkout root::

    python -m align.data.shards configs/fsdd-audio-text.yaml runs/shards --prefix fsdd --shard-size 225

writes that config's ``data.train`` (FSDD's 2,700 training takes, 12 shards) as ``runs/shards/fsdd-*.tar``,
which ``configs/fsdd_shards.yaml`` streams.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

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


def write_shards(rows: Iterable[dict[str, Any]], out_dir: str | Path, shard_size: int,
                 prefix: str = "shard") -> list[Path]:
    """Write samples ``{"__key__": str, EXT: value, ...}`` as tar shards of ``shard_size``: bytes as
    they are (encoded media), str as UTF-8 (``.txt``), numpy arrays as ``.npy``, anything else as
    JSON. Each shard is written under a temporary name and renamed, so a glob never matches a half
    shard; keys must be unique and free of '.' and '/' (webdataset splits the key off there)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, paths, seen = iter(rows), [], set()
    for index in itertools.count():
        chunk = list(itertools.islice(rows, shard_size))
        if not chunk:
            return paths
        path = out / f"{prefix}-{index:06d}.tar"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
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
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


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
            path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) and \
                os.path.isfile(value) else None
            if path is not None or isinstance(value, dict):
                ext = Path(path).suffix.lstrip(".").lower() if path else MEDIA_EXT.get(type(table.features[col]).__name__, "bin")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.data.shards",
                                     description="Write a config's dataset as webdataset tar shards.")
    parser.add_argument("config", help="a config YAML whose dataset to write")
    parser.add_argument("out_dir", help="folder for PREFIX-000000.tar, ...")
    parser.add_argument("--key", default="data.train", choices=["data.train", "data.val", "eval.data"])
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="the rows are shuffled with this seed before "
                        "writing, so every shard (and a stream's head) mixes the classes")
    parser.add_argument("--keep-order", action="store_true", help="write the rows in table order")
    args = parser.parse_args(argv)
    from align.config.schema import load_config
    from align.data.tables import load_table
    from align.errors import AlignError

    try:
        cfg = load_config(args.config, validate_adapters=False)
        spec = {"data.train": cfg.data.train, "data.val": cfg.data.val,
                "eval.data": cfg.eval.data if cfg.eval else None}[args.key]
        if spec is None:
            parser.error(f"{args.config} has no {args.key}")
        table = load_table(spec, args.key)
        table = table if args.keep_order else table.shuffle(seed=args.seed)
        paths = write_shards(table_rows(table, spec), args.out_dir, args.shard_size, args.prefix)
    except (AlignError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(table)} samples of {args.key} in {len(paths)} shards: {paths[0]} .. {paths[-1].name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
