"""What ``datasets.load_dataset`` is given, checked before it runs.

``load_dataset`` takes any string: a packaged builder (csv, imagefolder, ...), a local path, or a Hub
id. So a misspelled builder (``imagefoldr``) went to the Hub and, offline, failed after half a minute
with a ConnectionError. A name that is none of align's sources, a packaged builder, a local path or
an ``owner/name`` Hub id is refused here at once, with the closest known name. And the csv builder
reads whatever file it is given: a PNG came back as pandas' "Error tokenizing data" wrapped in
"An error occurred while generating the dataset", naming no file; binary files are named up front.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from align.data.sources import SOURCES
from align.errors import DataError

# a Hub dataset id: owner/name (the Hub's own rule: letters, digits, '-', '_', '.'), optionally @revision
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
# the start of a file that is no text table, and what it is
MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "gzip data",
    b"PAR1": "a parquet file (source: parquet reads it)",
    b"\x93NUMPY": "a numpy array",
    b"RIFF": "a RIFF (WAV / AVI / WebP) file",
}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")  # the csv builder decompresses these itself
SNIFF_BYTES = 1 << 16


def packaged_builders() -> list[str]:
    """The builders ``datasets`` ships (csv, json, parquet, imagefolder, ...), read from its table."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return sorted(_PACKAGED_DATASETS_MODULES)


def check_source(spec, key: str) -> None:
    """Refuse a source ``load_dataset`` could only look up on the Hub although it is no Hub id (a
    typo of a builder or of an align source), and a binary file given to the csv builder."""
    source = spec.source
    builders = packaged_builders()
    if source not in builders and not Path(source).exists() and not HUB_ID.match(source):
        ours = SOURCES.names()
        close = difflib.get_close_matches(source, [*ours, *builders], n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise DataError(
            f"config key '{key}.source': unknown source '{source}'; {hint}(not a local path, and a Hub "
            f"dataset is named owner/name). Known: align sources {ours}; datasets builders {builders}"
        )
    if source == "csv" and spec.data_files is not None and "encoding" not in spec.load_kwargs:
        for path in local_files(spec):
            what = binary_kind(path)
            if what:
                raise DataError(
                    f"config key '{key}.data_files': not a CSV file: {path} ({what}); source 'csv' reads "
                    "comma-separated text (images and audio are read from a path column, or with "
                    "source: imagefolder / audiofolder)"
                )


def local_files(spec) -> list[str]:
    """The local files ``data_files`` matches, resolved as datasets resolves them (none if it cannot:
    load_dataset then reports the pattern in its own words)."""
    from datasets.data_files import DataFilesDict, sanitize_patterns

    try:
        files = DataFilesDict.from_patterns(sanitize_patterns(spec.data_files), base_path=spec.data_dir or "")
    except (FileNotFoundError, ValueError, TypeError):
        return []
    return [f for split in files.values() for f in split if Path(f).is_file()]


def binary_kind(path: str | Path) -> str | None:
    """What ``path`` is when it is clearly not text ("a PNG image", "binary data"), else None."""
    if str(path).lower().endswith(COMPRESSED):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return None  # load_dataset names an unreadable file itself
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            return what
    return "binary data: it has NUL bytes" if b"\x00" in head else None


def generation_error(spec, key: str, err: Exception) -> DataError:
    """A builder that failed on a file: datasets' "An error occurred while generating the dataset"
    hides the reason in ``__cause__`` (pandas' parser error, ...); the DataError names files and reason."""
    where = spec.data_files if spec.data_files is not None else spec.data_dir
    reason = err.__cause__ or err
    return DataError(
        f"config key '{key}.data_files': source '{spec.source}' cannot read {where}: "
        f"{type(reason).__name__}: {str(reason).strip()}"
    )
