"""Seeded train/test and k-fold splits of a table's rows, for every source.

One function, :func:`split_rows`, used by the ``holdout`` option of any dataset spec and by the
builtin sources' own ``test_fraction`` / ``folds`` options, so a split means the same thing
everywhere. All of it is scikit-learn's splitters; this module only picks the right one:

=================  =========================  =======================================
                   plain                      with ``group`` (e.g. speaker)
=================  =========================  =======================================
fraction           ``train_test_split``       ``StratifiedGroupKFold`` fold 0 of
                   (stratified by label)      round(1/fraction) / ``GroupShuffleSplit``
k-fold             ``StratifiedKFold`` /      ``StratifiedGroupKFold`` / ``GroupKFold``
                   ``KFold``
=================  =========================  =======================================

sklearn has no stratified *and* grouped shuffle split, so a grouped fraction split takes the first
fold of a stratified group k-fold with k = round(1 / test_fraction): the held-out share is 1/k of
the groups (0.2 -> exactly 1/5; 0.3 -> 1/3).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from align.errors import AlignError


class SplitError(AlignError, ValueError):
    """The rows cannot be split as asked (too few members of a class or group, ...)."""


def split_rows(
    n: int,
    take: str,
    *,
    labels: Sequence | None = None,
    groups: Sequence | None = None,
    test_fraction: float = 0.2,
    folds: int | None = None,
    fold: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Sorted row indices of side ``take`` ('train' | 'test' | 'all') of a seeded split of ``n`` rows.

    ``labels`` stratifies (class proportions kept on both sides); ``groups`` keeps every group on
    one side. ``folds`` = k gives k-fold cross-validation: test is fold ``fold``, train the rest.
    """
    from sklearn import model_selection as ms

    if take == "all":
        return np.arange(n)
    if take not in ("train", "test"):
        raise SplitError(f"split must be 'train', 'test' or 'all', not '{take}'")
    if folds is not None and not 0 <= fold < folds:
        raise SplitError(f"fold must be in 0..{folds - 1}, got {fold}")
    idx = np.arange(n)
    y = None if labels is None else np.asarray(labels)  # as given: class order decides the shuffle
    g = None if groups is None else np.asarray(groups)
    try:
        if g is None and folds is None:
            train, test = ms.train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
        else:
            if g is None:
                splitter = (ms.StratifiedKFold if y is not None else ms.KFold)(
                    n_splits=folds, shuffle=True, random_state=seed
                )
            elif y is not None:
                k = folds or max(2, round(1 / test_fraction))
                splitter = ms.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            elif folds is not None:
                splitter = ms.GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            else:
                splitter = ms.GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
            parts = list(splitter.split(idx, y if y is not None else np.zeros(n), g))
            train, test = parts[fold if folds is not None else 0]
    except ValueError as err:
        raise SplitError(str(err)) from None
    return np.sort(train if take == "train" else test)


def per_class_draw(labels: np.ndarray, classes: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Row indices: the first ``k`` rows of a ``default_rng(seed)`` permutation of each class's rows,
    classes in the given order, sorted within a class. Draws are nested over ``k`` (the 2-row draw
    of a seed is inside its 4-row draw); a class with fewer than ``k`` rows raises ``ValueError``
    naming it. Shared by ``align adapt``'s k-shot draws and ``eval.probe.shots``."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < k:
            raise ValueError(f"class {c}: {k} rows asked, {len(pool)} there")
        rows.append(np.sort(rng.permutation(pool)[:k]))
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
