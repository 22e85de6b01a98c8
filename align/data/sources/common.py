"""What the builtin sources share: option checking, the fixed splits, the digit captions and
tables, reading a pixel CSV. Each source is its own module in ``align.data.sources``; they all import
from here and from nothing else in the package, so there is no circle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from align.data.splits import SplitError, split_rows
from align.errors import DataError

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
    try:
        return split_rows(n, split, **kwargs)
    except SplitError as err:
        raise DataError(str(err).replace("fold must", "load_kwargs.fold must")) from None


def _digit_table(images: list, labels: list[int], rows: np.ndarray):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
            "caption": datasets.Sequence(datasets.Value("string")),
        }
    )
    captions = [rotated_captions(DIGIT_CAPTIONS, DIGIT_NAMES[lab], int(r)) for lab, r in zip(labels, rows)]
    return datasets.Dataset.from_dict({"image": images, "label": labels, "caption": captions}, features=features)


def read_pixel_csv(
    path: str | Path, shape: tuple[int, ...] = (28, 28), label: str = "last"
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, *shape], labels int64 [N])`` from a (gzip) CSV of pixel rows."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read pixel CSV {path}: {err}") from None
    n_pixels = int(np.prod(shape))
    if table.ndim != 2 or table.shape[1] != n_pixels + 1:
        raise DataError(
            f"pixel CSV {path}: expected {n_pixels} pixel columns + 1 label column for shape "
            f"{list(shape)}, got table shape {table.shape}"
        )
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
