"""Builtin dataset sources: tables ``datasets.load_dataset`` has no builder for.

* ``sklearn-digits``: scikit-learn's 1,797 real 8x8 digits (ships inside scikit-learn; the demo).
* ``pixel-csv``: one image per CSV row, pixels then the label (e.g. the MNIST 5k subset), with a
  fixed stratified train/test split.
* ``files``: files matched by glob(s) in ``data_files``, one row each: ``path`` plus the named
  groups of a regex on the file name (``load_kwargs.pattern``), e.g. FSDD's
  ``{digit}_{speaker}_{take}.wav``.
* ``moving-digits``: synthetic clips of a real MNIST digit moving in one of four directions
  (``align.synthetic_video``).

Each builtin takes the whole ``DatasetSpec``; its options come from ``load_kwargs``.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_CAPTIONS = [
    "a photo of the number {}.",
    "a handwritten {}.",
    "the digit {}.",
    "a drawing of the number {}.",
    "a scan of a handwritten {}.",
    "the number {} written by hand.",
    "a small image of the digit {}.",
    "a blurry photo of the number {}.",
]


from align.errors import DataError  # noqa: E402  (re-exported)


def builtin_options(spec, allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec.load_kwargs) - set(allowed))
    if unknown:
        raise DataError(f"unknown load_kwargs {unknown} for source '{spec.source}'; known: {sorted(allowed)}")
    return {**allowed, **spec.load_kwargs}


def rotated_captions(templates: list[str], name: str, k: int) -> list[str]:
    """Every template filled with a class name, starting at template ``k``, so rows spread over
    the templates (training draws one per visit; evaluation uses the first)."""
    k %= len(templates)
    return [t.format(name) for t in templates[k:] + templates[:k]]


def check_digit_labels(labels: np.ndarray, source: str) -> None:
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{source}: labels must be digits 0-9, got {labels.min()}..{labels.max()}")


def stratified_split(labels: np.ndarray, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of a fixed stratified train/test split ('all' = every row)."""
    return _split(len(labels), split, labels=labels, test_fraction=test_fraction, seed=seed)


def fold_rows(labels: np.ndarray, split: str, folds: int, fold: int, seed: int) -> np.ndarray:
    """Sorted row indices of one stratified k-fold split ('all' = every row)."""
    return _split(len(labels), split, labels=labels, folds=folds, fold=fold, seed=seed)


def _split(n: int, split: str, **kwargs) -> np.ndarray:
    from align.splits import SplitError, split_rows

    try:
        return split_rows(n, split, **kwargs)
    except SplitError as err:
        raise DataError(str(err).replace("fold must", "load_kwargs.fold must")) from None


def _digit_table(images: list, labels: list[int], rows: np.ndarray):
    import datasets

    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=DIGIT_NAMES),
        "caption": datasets.Sequence(datasets.Value("string")),
    })
    captions = [rotated_captions(DIGIT_CAPTIONS, DIGIT_NAMES[lab], int(r)) for lab, r in zip(labels, rows)]
    return datasets.Dataset.from_dict({"image": images, "label": labels, "caption": captions},
                                      features=features)


def sklearn_digits(spec_or_split):
    """scikit-learn's 1,797 real 8x8 handwritten digits, fixed stratified 80/20 train/test split.

    Each row has ``image`` (PIL), ``label`` (0-9) and ``caption``: every caption template filled
    with the digit's name, rotated per row (training draws one at random each epoch).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    split = spec_or_split if isinstance(spec_or_split, str) else spec_or_split.split
    if split not in ("train", "test"):
        raise DataError(f"sklearn-digits has splits 'train' and 'test', not '{split}'")
    digits = load_digits()
    rows = stratified_split(digits.target, split, 0.2, 0)
    images = [Image.fromarray((digits.images[r] * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
              for r in rows]
    return _digit_table(images, [int(digits.target[r]) for r in rows], rows)


def read_pixel_csv(path: str | Path, shape: tuple[int, ...] = (28, 28),
                   label: str = "last") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, *shape], labels int64 [N])`` from a (gzip) CSV of pixel rows."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read pixel CSV {path}: {err}") from None
    n_pixels = int(np.prod(shape))
    if table.ndim != 2 or table.shape[1] != n_pixels + 1:
        raise DataError(f"pixel CSV {path}: expected {n_pixels} pixel columns + 1 label column for shape "
                        f"{list(shape)}, got table shape {table.shape}")
    labels = table[:, -1] if label == "last" else table[:, 0]
    pixels = table[:, :-1] if label == "last" else table[:, 1:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"pixel CSV {path}: pixel values must be 0-255")
    return pixels.reshape(-1, *shape).astype(np.uint8), labels.astype(np.int64)


def single_file(spec) -> str:
    files = spec.data_files
    if isinstance(files, list) and len(files) == 1:
        files = files[0]
    if not isinstance(files, str):
        raise DataError(f"source '{spec.source}' needs data_files: one file path, got {files!r}")
    return files


def pixel_csv(spec):
    """Digits from a pixel CSV (``data_files``), e.g. MNIST 5k: ``load_kwargs`` ``shape`` ([28, 28]),
    ``label`` ('last' | 'first'), ``test_fraction`` (0.2), ``seed`` (0); split train | test | all."""
    from PIL import Image

    opts = builtin_options(spec, {"shape": [28, 28], "label": "last", "test_fraction": 0.2, "seed": 0})
    images, labels = read_pixel_csv(single_file(spec), tuple(opts["shape"]), opts["label"])
    check_digit_labels(labels, "pixel-csv")
    rows = stratified_split(labels, spec.split, float(opts["test_fraction"]), int(opts["seed"]))
    return _digit_table([Image.fromarray(images[r], mode="L") for r in rows],
                        [int(labels[r]) for r in rows], rows)


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
                raise DataError(f"file {path} does not match load_kwargs.pattern {opts['pattern']!r} "
                                f"(searched in its {opts['match']})")
            for g, v in m.groupdict().items():
                rows[g].append(v)
        rows["path"].append(path)
    for g, values in rows.items():
        if g != "path" and all(v is not None and v.isdigit() for v in values):
            rows[g] = [int(v) for v in values]
    return datasets.Dataset.from_dict(rows)


def moving_digits(spec):
    from align.synthetic_video import moving_digits_table

    return moving_digits_table(spec)


def packed_npz(spec):
    from align.builtin_arrays import packed_npz as load

    return load(spec)


def tu_dataset(spec):
    from align.builtin_graphs import tu_dataset as load

    return load(spec)


def graph_nodes(spec):
    from align.builtin_nodes import graph_nodes as load

    return load(spec)


def sklearn_table(spec):
    from align.builtin_tables import sklearn_table as load

    return load(spec)


def _sources():
    """The data-source registry: these builtins plus sources other packages declare under the
    ``align.sources`` entry-point group (a function ``spec -> datasets.Dataset``)."""
    from align.registry import Registry

    registry: Registry = Registry("data source", entry_point_group="align.sources")
    for name, fn in BUILTINS.items():
        registry.register(name)(fn)
    return registry


# builtins that split themselves by load_kwargs.folds / fold (align crossval sets those)
FOLD_SOURCES = {"tu-dataset", "packed-npz"}

BUILTINS: dict[str, Callable[[Any], Any]] = {
    "sklearn-digits": sklearn_digits,
    "pixel-csv": pixel_csv,
    "files": files,
    "moving-digits": moving_digits,
    "packed-npz": packed_npz,
    "tu-dataset": tu_dataset,
    "graph-nodes": graph_nodes,
    "sklearn-table": sklearn_table,
}

SOURCES = _sources()
