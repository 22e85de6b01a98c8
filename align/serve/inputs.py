"""Raw request items -> what each modality's eval preprocessor reads.

A request (and later an HTTP upload) brings strings, file paths, arrays, or a file's bytes. The
preprocessors in ``align.modalities`` already read most of these; this module only checks the batch
as a whole (a list, not empty, not too long, strings within a bound) and turns uploaded bytes into a
form the preprocessor reads:

* image, audio, video: their loaders decode bytes themselves (PIL / soundfile / PyAV over a
  ``BytesIO``); an ``Upload`` with a filename becomes the HF-style ``{"bytes", "path"}`` dict, so a
  decoding error names the uploaded file;
* graph, pointcloud: their readers pick a parser by file extension and open a path, so bytes are
  written to a temporary file whose suffix is the upload's (or, for plain bytes, sniffed from the
  first bytes: ``.npy``, ``.npz``, ``.ply``, ``.off``, ``.pcd``, ``.graphml``, ``.gexf``, ``.gml``);
  the files live until the batch is encoded;
* text: UTF-8 bytes are decoded; tabular and every other modality take no bytes.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from align.serve.errors import SearchError

DECODE_BYTES = {"image", "audio", "video"}  # their loaders read bytes from memory
PATH_FORMATS = {"graph", "pointcloud"}  # their readers need a file with the right extension


@dataclass(frozen=True)
class Upload:
    """An uploaded file: its bytes and, when known, its name (whose extension says the format)."""

    data: bytes
    filename: str | None = None


def _sniff(modality: str, data: bytes) -> str | None:
    """The file extension a graph / point-cloud file's first bytes say it has, or None."""
    head = data[:512].lstrip()
    if modality == "pointcloud":
        for magic, ext in ((b"\x93NUMPY", ".npy"), (b"PK\x03\x04", ".npz"), (b"ply", ".ply"), (b"OFF", ".off")):
            if data.startswith(magic) or head.startswith(magic):
                return ext
        if head.startswith((b"# .PCD", b"VERSION", b"FIELDS")):
            return ".pcd"
    elif modality == "graph":
        if b"<graphml" in head:
            return ".graphml"
        if b"<gexf" in head:
            return ".gexf"
        if head.startswith((b"graph", b"Creator", b"creator")):
            return ".gml"
    return None


def _bytes_of(item: Any) -> tuple[bytes, str | None] | None:
    if isinstance(item, Upload):
        return bytes(item.data), item.filename
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item), None
    return None


def check_batch(modality: str, raw_items: Any, max_batch: int, max_chars: int) -> list:
    """The batch as a list, refused when it is no list, empty, over ``max_batch`` items, or holds a
    string over ``max_chars`` characters (a tokenizer truncates, but only after reading all of it)."""
    if isinstance(raw_items, (str, bytes, Upload)) or not isinstance(raw_items, (Sequence, np.ndarray)):
        raise SearchError(
            f"raw_items must be a list of {modality} items, got {type(raw_items).__name__}; wrap one item in a list"
        )
    items = list(raw_items)
    if not items:
        raise SearchError(f"empty batch: no {modality} items to encode")
    if len(items) > max_batch:
        raise SearchError(f"batch of {len(items)} {modality} items; at most {max_batch} per call (max_batch)")
    for i, item in enumerate(items):
        if isinstance(item, str) and len(item) > max_chars:
            raise SearchError(
                f"{modality} item {i} is a string of {len(item)} characters; the limit is {max_chars} (max_text_chars)"
            )
    return items


@contextlib.contextmanager
def readable_items(modality: str, items: list, max_chars: int) -> Iterator[list]:
    """``items`` with uploaded bytes made readable by ``modality``'s preprocessor (temporary files,
    where needed, exist inside the ``with`` block)."""
    with contextlib.ExitStack() as stack:
        folder: Path | None = None
        out = []
        for i, item in enumerate(items):
            got = _bytes_of(item)
            if got is None:
                out.append(item)
                continue
            data, filename = got
            if not data:
                raise SearchError(f"{modality} item {i}: empty upload (0 bytes)")
            if modality == "text":
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise SearchError(f"text item {i}: bytes are not UTF-8 text ({err})") from None
                if len(text) > max_chars:
                    raise SearchError(
                        f"text item {i} is a string of {len(text)} characters; the limit is {max_chars} "
                        "(max_text_chars)"
                    )
                out.append(text)
            elif modality in DECODE_BYTES:
                out.append({"bytes": data, "path": filename} if filename else data)
            elif modality in PATH_FORMATS:
                suffix = Path(filename).suffix.lower() if filename else _sniff(modality, data)
                if not suffix:
                    raise SearchError(
                        f"{modality} item {i}: cannot tell the file format of {len(data)} bytes; send it as "
                        f"Upload(data, filename=...) with the file's extension"
                    )
                if folder is None:
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="align-serve-")))
                path = folder / f"item-{i}{suffix}"
                path.write_bytes(data)
                out.append(str(path))
            else:
                raise SearchError(f"{modality} item {i}: the {modality} modality takes no file bytes")
        yield out
