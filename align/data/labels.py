"""Class labels: a label column as class ids with names, and the names zero-shot prompts use.

Class ids always come from the data (a ``ClassLabel``, names looked up in ``label_names``, or the
sorted distinct strings), and names given elsewhere are matched to them by name, never by
position, so a list in another order cannot silently mislabel every class.
"""

from __future__ import annotations

import numpy as np

from align.errors import ConfigError, DataError


def class_names(table, label_column: str) -> list[str] | None:
    """Names of a ClassLabel column, if the table has them."""
    feat = table.features.get(label_column)
    return list(feat.names) if hasattr(feat, "names") else None


def encode_labels(table, column: str, names: list[str] | None, key: str):
    """Make ``column`` integer class ids 0..C-1, named where names are known (a ``ClassLabel``).

    * a ClassLabel (imagefolder, audiofolder, builtins) keeps its names, or is renamed by ``names``;
    * strings become ids by name: ``names`` gives the order, else the sorted distinct strings
      (imagefolder's rule), so a CSV of 'cat' / 'dog' labels works as it is;
    * integers stay, named by ``names`` when given (label i is names[i]); whole floats become ints.
    """
    import datasets

    feat = table.features[column]
    where = f"config key '{key}.label_column': column '{column}'"
    if isinstance(feat, datasets.ClassLabel):
        if names is None:
            return table
        if len(names) != feat.num_classes:
            raise DataError(
                f"config key '{key}.label_names': {len(names)} names for the {feat.num_classes} "
                f"classes of column '{column}' {feat.names}"
            )
        return table.cast_column(column, datasets.ClassLabel(names=names))
    values = table[column]
    missing = next((i for i, v in enumerate(values) if v is None), None)
    if missing is not None:
        raise DataError(f"{where} has no label in row {missing}")
    dtype = getattr(feat, "dtype", None)
    if dtype == "string" or dtype == "large_string":
        unknown = sorted(set(values) - set(names)) if names is not None else []
        if unknown:
            row = next(i for i, v in enumerate(values) if v == unknown[0])
            raise DataError(
                f"config key '{key}.label_names': column '{column}' holds {unknown[:10]} "
                f"(first in row {row}), which are not in label_names {names}"
            )
        return table.cast_column(column, datasets.ClassLabel(names=names or sorted(set(values))))
    labels = np.asarray(values)
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, labels.round()):
            row = int(np.nonzero(labels != labels.round())[0][0])
            raise DataError(f"{where} must hold class ids or names; row {row} has {labels[row]}")
        table = table.cast_column(column, datasets.Value("int64"))
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{where} must hold class ids (integers) or names (strings), got {dtype or feat}")
    if names is None:
        return table
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataError(
            f"config key '{key}.label_names': column '{column}' must hold integers "
            f"0..{len(names) - 1}, got {labels[:5].tolist()}..."
        )
    return table.cast_column(column, datasets.ClassLabel(names=names))


def zeroshot_classes(
    given: list[str] | dict[str, str] | None,
    data_names: list[str] | None,
    labels: np.ndarray,
    key: str = "eval.zeroshot.classnames",
) -> list[str]:
    """The names put in prompts, in class-id order. Class ids come from the data, so names are
    matched to them by name whenever the data has names: a list in another order (imagefolder sorts
    its folders) would otherwise silently score every swapped class as wrong."""
    if len(labels) and labels.min() < 0:
        row = int(np.argmax(labels < 0))
        raise ConfigError(
            f"config key 'eval.data.label_column': row {row} has no label ({labels[row]}); "
            "zero-shot needs a class for every row (drop them with where: {label: {ge: 0}})"
        )
    if given is None:
        if data_names is None:
            raise ConfigError(
                f"config key '{key}': the label column holds bare class ids, so there are no "
                "class names to build prompts from; give classnames (class i is "
                "classnames[i]) or eval.data.label_names"
            )
        return list(data_names)
    if data_names is None:
        if isinstance(given, dict):
            raise ConfigError(
                f"config key '{key}': a mapping needs class names in the data; the label "
                "column holds bare ids, so give a list (class i is classnames[i])"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(given)):
            raise ConfigError(
                f"config key '{key}': {len(given)} class names, but the eval data's labels "
                f"run {labels.min()}..{labels.max()} (class i is classnames[i])"
            )
        return list(given)
    names = list(given) if isinstance(given, list) else list(given.keys())
    if set(names) != set(data_names):
        missing, extra = [n for n in data_names if n not in names], [n for n in names if n not in data_names]
        raise ConfigError(
            f"config key '{key}': {names} do not match the data's class names {data_names} "
            f"(class id order); missing {missing}, not in the data {extra}"
        )
    return [given[n] for n in data_names] if isinstance(given, dict) else list(data_names)
