"""``packed-npz``: many variable-length objects packed into one .npz (e.g. the DALES objects: all
points concatenated, plus offsets), one object per row.

``data_files``: one .npz path. ``load_kwargs`` (defaults in ``DEFAULTS``):
  * ``points``: key of the concatenated per-point array [P, D] (D = 3 for xyz);
  * ``offsets``: key of the object boundaries, either N + 1 entries (object i =
    ``points[offsets[i]:offsets[i+1]]``, the last entry = P) or N start offsets (the last object
    runs to P); they must start at 0 and not decrease;
  * ``columns``: output column -> key of a per-object array [N] (e.g. ``{label: labels, id: ids}``);
    keys of the default mapping that the file lacks are left out, keys given explicitly must exist;
  * ``per_point``: output column -> key of another per-point array aligned with ``points``
    (colours, normals, intensity), each row getting its object's slice (``pack_columns`` can then
    pack ``{points, colors}`` into the dict the point-cloud adapter reads);
  * ``class_names``: key of the class-name array; the ``stratify`` column becomes a
    ``datasets.ClassLabel`` with those names (ignored when the default key is absent);
  * ``stratify`` (``label``): the column the split is stratified on (None: a plain random split);
  * ``test_fraction`` (0.2), ``seed`` (0): split ``train`` | ``test`` | ``all`` via ``stratified_split``;
    or ``folds`` (k) + ``fold`` (i): test = fold i of a shuffled stratified k-fold (for
    ``align crossval``), train = the other folds.
``flat`` (False): store each object's points as one flat list of n*D floats instead of n lists
of D; the point-cloud adapter reshapes it, and reading a row back is ~10x faster (0.4 vs 4 ms for
an average DALES object), which matters when one DataLoader worker feeds a training run.
Rows: ``points`` (built as Arrow lists straight from numpy, so the 1.15 M DALES points load in
well under a second), the ``columns`` and the ``per_point`` columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from align.data.sources import SOURCES
from align.data.sources.common import builtin_options, fold_rows, single_file, stratified_split
from align.errors import DataError

DEFAULTS: dict[str, Any] = {
    "points": "points",
    "offsets": "offsets",
    "columns": {"label": "labels", "id": "ids"},
    "per_point": {},
    "class_names": "class_names",
    "stratify": "label",
    "test_fraction": 0.2,
    "seed": 0,
    "folds": None,
    "fold": 0,
    "flat": False,
}


def object_bounds(offsets: np.ndarray, n_points: int, n_objects: int | None, path: str) -> np.ndarray:
    """N + 1 boundaries from either layout; checks them against the point and object counts."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or not len(offsets):
        raise DataError(
            f"{path}: offsets must be a non-empty 1-D integer array, got {offsets.dtype} {list(offsets.shape)}"
        )
    if n_objects is None:  # no per-object column to count by: boundaries if the last one is P
        n_objects = len(offsets) - 1 if offsets[-1] == n_points else len(offsets)
    if len(offsets) == n_objects + 1 and offsets[-1] == n_points:
        bounds = offsets.astype(np.int64)
    elif len(offsets) == n_objects:
        bounds = np.append(offsets, n_points).astype(np.int64)
    else:
        raise DataError(
            f"{path}: {len(offsets)} offsets (last {int(offsets[-1])}) fit neither {n_objects} "
            f"objects + 1 ending at {n_points} points nor {n_objects} start offsets"
        )
    if bounds[0] != 0 or (np.diff(bounds) < 0).any() or bounds[-1] > n_points:
        raise DataError(f"{path}: offsets must start at 0, not decrease and stay within {n_points} points")
    return bounds


def split_rows(labels: np.ndarray, split: str, opts: dict[str, Any]) -> np.ndarray:
    if opts["folds"] is None:
        return stratified_split(labels, split, float(opts["test_fraction"]), int(opts["seed"]))
    return fold_rows(labels, split, int(opts["folds"]), int(opts["fold"]), int(opts["seed"]))


def ragged_column(values: np.ndarray, bounds: np.ndarray, rows: np.ndarray, flat: bool = False):
    """Arrow list column: row r = values[bounds[r]:bounds[r+1]] for the chosen rows, no Python loop
    over points ([P] -> list<float>, [P, D] -> list<fixed_size_list<D>>, or with ``flat`` one
    list<float> of n*D values)."""
    import pyarrow as pa

    starts, ends = bounds[rows], bounds[rows + 1]
    lengths = ends - starts
    new_offsets = np.concatenate([[0], np.cumsum(lengths)])
    take = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    chosen = np.ascontiguousarray(values[take])
    child = pa.array(chosen.reshape(-1))
    if chosen.ndim > 2:
        raise DataError(f"per-point arrays must be [P] or [P, D], got {list(values.shape)}")
    if chosen.ndim == 2 and flat:
        new_offsets = new_offsets * chosen.shape[1]
    elif chosen.ndim == 2:
        child = pa.FixedSizeListArray.from_arrays(child, chosen.shape[1])
    if new_offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), child)
    return pa.LargeListArray.from_arrays(pa.array(new_offsets.astype(np.int64)), child)


@SOURCES.register("packed-npz")
def packed_npz(spec):
    import datasets
    import pyarrow as pa

    opts = builtin_options(spec, DEFAULTS)
    path = single_file(spec)
    if not Path(path).is_file():
        raise DataError(f"packed-npz: no such file {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            raise ValueError("not an .npz archive")
        with z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(f"packed-npz: cannot read {path}: {err}") from None

    def array(key: str, what: str) -> np.ndarray:
        if key not in data:
            raise DataError(f"{path}: no array '{key}' for load_kwargs.{what} (arrays: {sorted(data)})")
        return data[key]

    points = array(opts["points"], "points")
    if points.ndim != 2 or points.dtype.kind != "f":
        raise DataError(
            f"{path}: '{opts['points']}' must be a float [P, D] array, got {points.dtype} {list(points.shape)}"
        )
    explicit = "columns" in spec.load_kwargs
    columns = {c: array(k, f"columns.{c}") for c, k in opts["columns"].items() if explicit or k in data}
    sizes = {c: len(v) for c, v in columns.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"{path}: per-object columns have different lengths {sizes}")
    n_objects = next(iter(sizes.values()), None)
    bounds = object_bounds(array(opts["offsets"], "offsets"), len(points), n_objects, path)
    n = len(bounds) - 1
    per_point = {c: array(k, f"per_point.{c}") for c, k in opts["per_point"].items()}
    for c, v in per_point.items():
        if len(v) != len(points):
            raise DataError(f"{path}: per_point '{c}' has {len(v)} rows, points has {len(points)}")

    stratify = opts["stratify"]
    if stratify is not None and stratify not in columns:
        raise DataError(
            f"{path}: load_kwargs.stratify '{stratify}' is not a column ({sorted(columns)}); "
            "give the label column or stratify: null for a plain random split"
        )
    labels = columns[stratify] if stratify is not None else np.zeros(n, np.int64)
    rows = split_rows(labels, spec.split, opts)

    names, explicit = None, "class_names" in spec.load_kwargs
    if explicit and opts["class_names"] is not None and stratify is None:
        raise DataError("load_kwargs.class_names needs load_kwargs.stratify (the label column)")
    if stratify is not None and opts["class_names"] is not None and (explicit or opts["class_names"] in data):
        names = [str(v.decode() if isinstance(v, bytes) else v) for v in array(opts["class_names"], "class_names")]
        lab = columns[stratify]
        if lab.dtype.kind not in "iu" or lab.min() < 0 or lab.max() >= len(names):
            raise DataError(
                f"{path}: '{stratify}' must hold integers 0..{len(names) - 1} for class_names "
                f"{names}, got {lab.min()}..{lab.max()}"
            )

    flat = bool(opts["flat"])
    table = {"points": ragged_column(points, bounds, rows, flat)}
    table.update({c: ragged_column(v, bounds, rows, flat) for c, v in per_point.items()})
    table.update({c: pa.array(v[rows]) for c, v in columns.items()})
    table = pa.table(table)
    features = datasets.Features.from_arrow_schema(table.schema)
    if names is not None:
        features[stratify] = datasets.ClassLabel(names=names)
        table = table.cast(features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))
