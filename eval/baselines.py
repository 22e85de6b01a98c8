"""Baselines that put a zero-shot number in context.

``node_feature_logreg``: scikit-learn's ``LogisticRegression`` on the raw node features of a node
table's rows (the ``graph-nodes`` source: each row's ``{"store", "center"}`` reference points at
the stored feature matrix), fitted on one spec's rows and scored on another's. It is the
"features only, no graph, supervised" reference for node-level zero-shot: on Planetoid splits it
sees the same 120 labelled nodes the aligned model trains on, but with their labels as targets
rather than as captions.

    align eval baseline configs/citeseer-node-text.yaml [dotted.key=value ...]

prints the accuracy of a model fitted on ``data.train`` and scored on ``align.eval.data`` (the command
is ``align.app.commands.baseline_cli``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from align.data.labels import class_names
from align.data.tables import load_table


def node_features(table, column: str) -> np.ndarray:
    """float32 [rows, F]: the stored features of each row's centre node."""
    from align.modalities.graph_io import is_store_ref, load_store

    refs = table[column]
    if not len(refs) or not all(is_store_ref(r) for r in refs):
        raise ValueError(
            f"column '{column}' must hold graph store references {{store, center}} "
            f"(the graph-nodes source), got {str(refs[0] if len(refs) else None):.80}"
        )
    stores = {s: load_store(s) for s in sorted({r["store"] for r in refs})}
    bare = [s for s, g in stores.items() if getattr(g, "x", None) is None]
    if bare:
        raise ValueError(f"graph store {bare[0]} has no node features")
    return np.stack([stores[r["store"]].x[int(r["center"])].numpy() for r in refs]).astype(np.float32)


def _graph_column(spec) -> str:
    if "graph" in spec.columns:
        return spec.columns["graph"]
    if len(spec.columns) == 1:
        return next(iter(spec.columns.values()))
    raise ValueError(f"cannot tell which of columns {spec.columns} holds the graph; name its modality 'graph'")


def node_feature_logreg(
    train_spec, test_spec, *, C: float = 1.0, max_iter: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Fit LogisticRegression(C) on ``train_spec``'s rows, score ``test_spec``'s (same label names).

    Returns ``accuracy``, ``n_train``, ``n_test``, ``n_classes`` and ``seconds`` (fit + predict)."""
    from sklearn.linear_model import LogisticRegression

    tables = {}
    for key, spec in (("data.train", train_spec), ("eval.data", test_spec)):
        if not spec.label_column:
            raise ValueError(f"config key '{key}.label_column': the baseline needs labels")
        tables[key] = load_table(spec, key)
    train, test = tables["data.train"], tables["eval.data"]
    names = (class_names(train, train_spec.label_column), class_names(test, test_spec.label_column))
    if names[0] != names[1]:
        raise ValueError(f"data.train and eval.data label different classes: {names[0]} vs {names[1]}")
    x_train = node_features(train, _graph_column(train_spec))
    x_test = node_features(test, _graph_column(test_spec))
    y_train = np.asarray(train[train_spec.label_column])
    y_test = np.asarray(test[test_spec.label_column])
    start = time.perf_counter()
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(x_train, y_train)
    accuracy = float((clf.predict(x_test) == y_test).mean())
    return {
        "accuracy": accuracy,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "n_classes": len(np.unique(y_train)),
        "seconds": time.perf_counter() - start,
    }
