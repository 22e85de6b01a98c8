"""Reading and rewriting an index folder's metadata file the way a hand edit would, and turning a
format-4 folder into one an older align wrote (metadata.jsonl), for the tests of what loading refuses."""

from __future__ import annotations

import json
from pathlib import Path

from align.index.metadata import METADATA, ArrowMetadata, write_metadata


def read_records(folder: Path) -> list[dict]:
    """``[{"id": ..., "metadata": {...}}, ...]`` as metadata.arrow holds them, in file order."""
    store = ArrowMetadata(Path(folder) / METADATA)
    out = [
        {"id": int(i), "metadata": json.loads(text)}
        for ids, texts in store.batches()
        for i, text in zip(ids.tolist(), texts)
    ]
    del store
    return out


def write_records(folder: Path, records: list[dict]) -> None:
    """Rewrite metadata.arrow holding ``records`` (ids ascending), keeping its recorded fields."""
    path = Path(folder) / METADATA
    fields = ArrowMetadata(path).fields
    texts = [json.dumps(r["metadata"], ensure_ascii=False) for r in records]
    tmp = path.with_suffix(".new")
    write_metadata(tmp, [([r["id"] for r in records], texts)], fields)
    tmp.replace(path)


def as_jsonl_folder(folder: Path) -> Path:
    """The folder's metadata.arrow replaced by the metadata.jsonl of index formats 1-3 (the manifest is
    the caller's to rewrite)."""
    folder = Path(folder)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in read_records(folder)]
    (folder / "metadata.jsonl").write_text("".join(lines), encoding="utf-8")
    (folder / METADATA).unlink()
    return folder
