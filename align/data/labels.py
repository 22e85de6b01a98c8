"""Class labels: a label column as class ids with names, and the names zero-shot prompts use.

Names given in a config are matched to the data's names by name, never by position, so a list in
another order cannot silently mislabel every class. Matching ignores case and treats ``_``, ``-``
and spaces alike ("children playing" is the folder ``children_playing``), because folder names
and CSV strings are written that way while people write names with spaces. The given spelling is
what captions and prompts show.

``label_names`` gives the class order: a list of names, or a mapping ``{data name: name shown}`` in
its order. A ClassLabel whose folders sort otherwise has its ids remapped (by a lookup, the rows keep
their class); ``where`` and ``holdout`` run before this and see the column as the source gives it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from align.errors import ConfigError, DataError


def name_key(name: str) -> str:
    """What two spellings of one class name share: lower case, ``_`` / ``-`` / runs of spaces as one space."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().casefold()


def match_names(given: Sequence[str], data: Sequence[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """Each given name's index in ``data``: its exact spelling first, else the one data name with the
    same ``name_key``. Returns (matched, given names matching no data name, clashes described: a data
    name two given names both match, or a given name matching several data names alike)."""
    exact = {n: i for i, n in enumerate(data)}
    loose: dict[str, list[int]] = {}
    for i, n in enumerate(data):
        loose.setdefault(name_key(n), []).append(i)
    matched: dict[str, int] = {}
    unmatched: list[str] = []
    clashes: list[str] = []
    owner: dict[int, str] = {}
    for g in given:
        found = [exact[g]] if g in exact else loose.get(name_key(g), [])
        if len(found) > 1:
            clashes.append(f"{g!r} matches {[data[i] for i in found]} alike")
        elif not found:
            unmatched.append(g)
        elif found[0] in owner:
            clashes.append(f"{owner[found[0]]!r} and {g!r} both name {data[found[0]]!r}")
        else:
            owner[found[0]], matched[g] = g, found[0]
    return matched, unmatched, clashes


def _same_class(names: Sequence[str]) -> str | None:
    """Two of ``names`` that would match one class, described; None if none."""
    seen: dict[str, str] = {}
    for n in names:
        if name_key(n) in seen:
            return f"{seen[name_key(n)]!r} and {n!r}"
        seen[name_key(n)] = n
    return None


def class_names(table, label_column: str) -> list[str] | None:
    """Names of a ClassLabel column, if the table has them."""
    feat = table.features.get(label_column)
    return list(feat.names) if hasattr(feat, "names") else None


def _mismatch(what: str, given: list[str], data: list[str], unmatched, clashes, missing) -> str:
    parts = [f"missing {missing}" if missing else "", f"not in the data {unmatched}" if unmatched else ""]
    parts += clashes
    return (
        f"{what}: {given} do not match the data's class names {data} (class id order; matched by name, "
        f"ignoring case, '_', '-' and spaces); " + ", ".join(p for p in parts if p)
    )


def _with_ids(table, column: str, ids: dict, names: list[str], desc: str):
    """``column`` as ``ClassLabel(names)``, each value replaced by ``ids[value]`` (-1, no label, stays)."""
    import datasets

    features = table.features.copy()
    features[column] = datasets.ClassLabel(names=names)
    return table.map(
        lambda values: {column: [v if v == -1 else ids[v] for v in values]},
        input_columns=column,
        batched=True,
        features=features,
        desc=desc,
    )


def encode_labels(table, column: str, names: list[str] | dict[str, str] | None, key: str):
    """Make ``column`` integer class ids 0..C-1, named where names are known (a ``ClassLabel``).

    * a ClassLabel (imagefolder, audiofolder, builtins) keeps its names, or takes ``names`` matched to
      its own by name (every class once): ids follow ``names``' order, the names their spelling;
    * strings become ids by name: ``names`` gives the order, else the sorted distinct strings
      (imagefolder's rule), so a CSV of 'cat' / 'dog' labels works as it is;
    * integers stay, named by a ``names`` list when given (label i is names[i]); whole floats become ints.

    A mapping ``{data name: name shown}`` is the list of its keys, shown as its values.
    """
    import datasets

    feat = table.features[column]
    where = f"config key '{key}.label_column': column '{column}'"
    given = list(names) if names is not None else None
    shown = [names[n] for n in given] if isinstance(names, dict) else given
    if isinstance(feat, datasets.ClassLabel):
        if names is None:
            return table
        data = list(feat.names)
        matched, unmatched, clashes = match_names(given, data)
        missing = [n for i, n in enumerate(data) if i not in matched.values()]
        if unmatched or clashes or missing:
            raise DataError(
                _mismatch(
                    f"config key '{key}.label_names' (column '{column}')", given, data, unmatched, clashes, missing
                )
            )
        order = [matched[g] for g in given]  # new id j is the data's id order[j]
        if order == list(range(len(data))):
            return table.cast_column(column, datasets.ClassLabel(names=shown))  # same ids, the given spelling
        new_id = {old: new for new, old in enumerate(order)}
        return _with_ids(table, column, new_id, shown, "class ids in label_names order")
    values = table[column]
    missing_row = next((i for i, v in enumerate(values) if v is None), None)
    if missing_row is not None:
        raise DataError(f"{where} has no label in row {missing_row}")
    dtype = getattr(feat, "dtype", None)
    if dtype == "string" or dtype == "large_string":
        if given is None:
            return table.cast_column(column, datasets.ClassLabel(names=sorted(set(values))))
        same = _same_class(given)
        if same:
            raise DataError(
                f"config key '{key}.label_names': {same} are one class name "
                "(matched ignoring case, '_', '-' and spaces)"
            )
        distinct = sorted(set(values))
        matched, unmatched, _ = match_names(distinct, given)  # each string's class; several spellings may share one
        if unmatched:
            row = next(i for i, v in enumerate(values) if v == unmatched[0])
            raise DataError(
                f"config key '{key}.label_names': column '{column}' holds {unmatched[:10]} "
                f"(first in row {row}), which are not in label_names {given} (matched by name, "
                "ignoring case, '_', '-' and spaces)"
            )
        if all(s in given for s in distinct) and shown == given:  # spelled as given: a cast does it
            return table.cast_column(column, datasets.ClassLabel(names=given))
        return _with_ids(table, column, matched, shown, "class ids by label_names")
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
    if isinstance(names, dict):
        raise DataError(
            f"config key '{key}.label_names': a mapping renames the data's class names, but column "
            f"'{column}' holds bare class ids; give a list (label i is label_names[i])"
        )
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataError(
            f"config key '{key}.label_names': column '{column}' must hold integers "
            f"0..{len(names) - 1}, got {labels[:5].tolist()}..."
        )
    return table.cast_column(column, datasets.ClassLabel(names=names))


@lru_cache(maxsize=64)
def _lookup(names: tuple[str, ...]) -> dict[str, int]:
    """Every spelling a streamed string label may take for each class id (exact, then ``name_key``)."""
    ids = {name_key(n): i for i, n in enumerate(names)}
    return {**ids, **{n: i for i, n in enumerate(names)}}


def class_id(label: str, names: Sequence[str]) -> int | None:
    """A string label's class id in ``names``, matched by name as ``encode_labels`` does; None if none."""
    table = _lookup(tuple(names))
    return table.get(label, table.get(name_key(label)))


def zeroshot_classes(
    given: list[str] | dict[str, str] | None,
    data_names: list[str] | None,
    labels: np.ndarray,
    key: str = "eval.zeroshot.classnames",
) -> list[str]:
    """The names put in prompts, in class-id order. Class ids come from the data, so names are
    matched to them by name whenever the data has names: a list in another order (imagefolder sorts
    its folders) would otherwise silently score every swapped class as wrong. A list names every
    class (in its spelling); a mapping renames only the classes it names, the others keep the data's."""
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
    names = list(given)
    matched, unmatched, clashes = match_names(names, data_names)
    if isinstance(given, dict):
        if unmatched:
            raise ConfigError(
                f"config key '{key}': {unmatched} match none of the data's class names {data_names} "
                "(matched by name, ignoring case, '_', '-' and spaces)"
            )
        if clashes:
            raise ConfigError(f"config key '{key}': {'; '.join(clashes)} (one class, renamed once)")
        renamed = {i: given[g] for g, i in matched.items()}
        return [renamed.get(i, n) for i, n in enumerate(data_names)]
    missing = [n for i, n in enumerate(data_names) if i not in matched.values()]
    if unmatched or clashes or missing:
        raise ConfigError(_mismatch(f"config key '{key}'", names, data_names, unmatched, clashes, missing))
    spelled = {i: g for g, i in matched.items()}
    return [spelled[i] for i in range(len(data_names))]
