"""Seeded k-shot draws: the same rows for every method, so methods differ only in what they do.

A draw takes the first ``k`` rows of a seeded permutation of each class's training rows
(``numpy.random.default_rng(seed)``, classes in order), so the draw for (k, seed) does not depend on
which methods run or in what order, and draws are nested: the 4-shot set of a seed holds its 2-shot
set, so a curve over shots adds examples instead of swapping them. A class with fewer than ``k``
rows, or none, is an error that names the class and its count: silently taking fewer would make a
"16-shot" number a 9-shot one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from align.data.splits import per_class_draw
from align.errors import AlignError


class ShotError(AlignError, ValueError):
    """A k-shot draw is impossible (too few rows in a class, a class with none, bad shot counts)."""


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def check_shots(shots: Sequence[int], labels: np.ndarray, classnames: Sequence[str], classes: Sequence[int]) -> None:
    """Every class in ``classes`` must have at least ``max(shots)`` training rows."""
    if not shots or any(int(k) < 1 for k in shots):
        raise ShotError(f"--shots must be positive integers, got {list(shots)}")
    counts = class_counts(labels, len(classnames))
    k = max(int(s) for s in shots)
    empty = [classnames[c] for c in classes if counts[c] == 0]
    if empty:
        raise ShotError(f"class(es) {empty} have no examples in the training split; a few-shot draw needs some")
    short = [(classnames[c], int(counts[c])) for c in classes if counts[c] < k]
    if short:
        listed = ", ".join(f"'{name}' has {n}" for name, n in short)
        raise ShotError(f"{k} shots per class asked, but {listed} training example(s); lower --shots")


def draw_shots(labels: np.ndarray, classes: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Row indices: ``k`` rows of each class in ``classes``, drawn with ``seed`` (sorted per class)."""
    try:
        return per_class_draw(labels, classes, k, seed)
    except ValueError as err:
        raise ShotError(str(err)) from None


def parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ShotError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ShotError(f"{name}: no values in {text!r}")
    return values


def base_classes(spec: str, classnames: Sequence[str]) -> list[int]:
    """``--base-classes``: class names or indices, comma-separated -> sorted class indices."""
    out = []
    for item in [s.strip() for s in str(spec).split(",") if s.strip()]:
        if item in classnames:
            out.append(list(classnames).index(item))
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(classnames):
            out.append(int(item))
        else:
            raise ShotError(
                f"--base-classes: {item!r} is neither a class name nor an index; classes: {list(classnames)}"
            )
    out = sorted(set(out))
    if not out or len(out) >= len(classnames):
        raise ShotError(f"--base-classes must name some but not all of the {len(classnames)} classes, got {spec!r}")
    return out
