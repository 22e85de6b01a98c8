"""``sklearn-table``: one of the small numeric tables that ship inside scikit-learn (no download),
one sample per row, for the tabular modality (``align.modalities.tabular``).

``load_kwargs``: ``name`` (required), ``test_fraction`` (0.3) and ``seed`` (0) of a fixed stratified
train/test split (``stratified_split``); ``split`` train | test | all.

Rows: ``features`` (list of float64, the table's columns in scikit-learn's order), ``label`` (a
``datasets.ClassLabel`` with readable class names, so captions and zero-shot prompts can name the
class) and ``id`` (the row's index in the whole table). The feature names are in the table's
``info.description`` and in ``TABLES``:

* ``wine``: 178 wines grown in one region of Italy by three cultivars (59 / 71 / 48), named
  "cultivar one" / "cultivar two" / "cultivar three"; 13 chemical measurements: alcohol,
  malic_acid, ash, alcalinity_of_ash, magnesium, total_phenols, flavanoids, nonflavanoid_phenols,
  proanthocyanins, color_intensity, hue, od280/od315_of_diluted_wines, proline.
* ``breast_cancer``: 569 breast-mass biopsies (Wisconsin diagnostic), malignant (212) / benign
  (357); 30 features: the mean, standard error and worst value of ten cell-nucleus measurements
  (radius, texture, perimeter, area, smoothness, compactness, concavity, concave points,
  symmetry, fractal dimension).
* ``iris``: 150 irises, setosa / versicolor / virginica (50 each); 4 features: sepal length,
  sepal width, petal length, petal width (cm).
"""

from __future__ import annotations

from typing import Any

from align.data.sources import SOURCES
from align.data.sources.common import builtin_options, stratified_split
from align.errors import DataError

# name -> (scikit-learn loader, class names; None: scikit-learn's target_names, already readable)
TABLES: dict[str, tuple[str, list[str] | None]] = {
    "wine": ("load_wine", ["cultivar one", "cultivar two", "cultivar three"]),
    "breast_cancer": ("load_breast_cancer", None),
    "iris": ("load_iris", None),
}


def load_sklearn_table(name: str) -> tuple[Any, Any, list[str], list[str]]:
    """``(X [N, F] float64, y [N] int, class names, feature names)`` of a shipped table."""
    import sklearn.datasets

    if name not in TABLES:
        raise DataError(f"load_kwargs.name must be one of {sorted(TABLES)}, not {name!r}")
    loader, names = TABLES[name]
    bunch = getattr(sklearn.datasets, loader)()
    classes = names or [str(c) for c in bunch.target_names]
    return bunch.data.astype("float64"), bunch.target.astype("int64"), classes, [str(f) for f in bunch.feature_names]


@SOURCES.register("sklearn-table")
def sklearn_table(spec):
    import datasets

    opts = builtin_options(spec, {"name": None, "test_fraction": 0.3, "seed": 0})
    if opts["name"] is None:
        raise DataError(f"source 'sklearn-table' needs load_kwargs.name, one of {sorted(TABLES)}")
    x, y, classes, feature_names = load_sklearn_table(opts["name"])
    rows = stratified_split(y, spec.split, float(opts["test_fraction"]), int(opts["seed"]))
    features = datasets.Features(
        {
            "features": datasets.Sequence(datasets.Value("float64")),
            "label": datasets.ClassLabel(names=classes),
            "id": datasets.Value("int64"),
        }
    )
    info = datasets.DatasetInfo(
        features=features,
        description=(
            f"scikit-learn '{opts['name']}' table, split '{spec.split}' ({len(rows)} of {len(y)} rows; stratified "
            f"test_fraction {opts['test_fraction']}, seed {opts['seed']}); classes {classes}; features "
            f"({len(feature_names)}, in order): {', '.join(feature_names)}"
        ),
    )
    return datasets.Dataset.from_dict(
        {"features": x[rows].tolist(), "label": y[rows].tolist(), "id": rows.tolist()}, features=features, info=info
    )
