"""``files``: one row per file matched by glob(s), with columns from a regex on its name or path."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from align.data.sources import SOURCES
from align.data.sources.common import builtin_options
from align.errors import DataError


@SOURCES.register("files")
def files(spec):
    """One row per file matched by the glob(s) in ``data_files``: ``path`` and the named groups of
    ``load_kwargs.pattern`` (a regex searched in the file name, or with ``match: path`` in the whole
    path with '/' separators, so ``<class>/<id>.wav`` layouts give the class from the folder:
    ``pattern: '(?P<label>[^/]+)/[^/]+$'``; all-digit values become ints). Files the pattern does
    not match are an error unless ``load_kwargs.skip_unmatched``."""
    import datasets

    opts = builtin_options(spec, {"pattern": None, "skip_unmatched": False, "match": "name"})
    if opts["match"] not in ("name", "path"):
        raise DataError(f"load_kwargs.match must be 'name' or 'path', not {opts['match']!r}")
    patterns = spec.data_files if isinstance(spec.data_files, list) else [spec.data_files]
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise DataError("source 'files' needs data_files: a glob or a list of globs")
    paths = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True) if Path(p).is_file()})
    if not paths:
        raise DataError(f"no files match data_files {patterns}")
    regex = re.compile(opts["pattern"]) if opts["pattern"] else None
    rows: dict[str, list] = {"path": []}
    if regex is not None:
        rows.update({g: [] for g in regex.groupindex})
    for path in paths:
        if regex is not None:
            m = regex.search(Path(path).name if opts["match"] == "name" else Path(path).as_posix())
            if m is None:
                if opts["skip_unmatched"]:
                    continue
                raise DataError(
                    f"file {path} does not match load_kwargs.pattern {opts['pattern']!r} "
                    f"(searched in its {opts['match']})"
                )
            for g, v in m.groupdict().items():
                rows[g].append(v)
        rows["path"].append(path)
    for g, values in rows.items():
        if g != "path" and all(v is not None and v.isdigit() for v in values):
            rows[g] = [int(v) for v in values]
    return datasets.Dataset.from_dict(rows)
