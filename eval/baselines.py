"""Baselines that put a zero-shot number in context.

``node_feature_logreg``: scikit-learn's ``LogisticRegression`` on the raw node features of a node
table's rows (the ``graph-nodes`` source: each row's ``{"store", "center"}`` reference points at
the stored feature matrix), fitted on one spec's rows and scored on another's. It is the
"features only, no graph, supervised" reference for node-level zero-shot: on Planetoid splits it
sees the same 120 labelled nodes the aligned model trains on, but with their labels as targets
rather than as captions.

``input_logreg``: the same supervised reference for every other modality: logistic regression on
the zero-shot query modality's raw input as its eval preprocessor hands it to the tower (pixels,
spectrogram, frames, points; flattened, standardised, and reduced to 256 PCA components past 2,048
values), on TF-IDF of the words for text, and for a graph per row on the mean and max of its node
features with its node and edge counts. It answers "how far is zero-shot from a supervised model
that sees the same rows' labels", not "the best supervised model". Inputs that are not one
fixed-size tensor per row (e.g. variable-length audio) are refused by name.

    align eval baseline configs/citeseer-node-text.yaml [dotted.key=value ...]
    align eval baseline configs/demo-digits.yaml

prints the accuracy of a model fitted on ``data.train`` and scored on ``align.eval.data`` (the command
is ``align.app.commands.baseline_cli``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from align.data.labels import class_names
from align.data.tables import load_table

MAX_RAW_DIM = 2048  # past this, PCA to PCA_DIM first: LogisticRegression on 150k pixels takes minutes
PCA_DIM = 256


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

    train, test = _labelled_tables(train_spec, test_spec)
    x_train = node_features(train, _graph_column(train_spec))
    x_test = node_features(test, _graph_column(test_spec))
    start = time.perf_counter()
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return _fit_and_score(clf, (x_train, train, train_spec), (x_test, test, test_spec), start)


def _fit_and_score(clf, fit_on: tuple, score_on: tuple, start: float) -> dict[str, Any]:
    """Fit ``clf`` on (features, table, spec) ``fit_on``'s labels, score it on ``score_on``'s."""
    (x_train, train, train_spec), (x_test, test, test_spec) = fit_on, score_on
    y_train = np.asarray(train[train_spec.label_column])
    y_test = np.asarray(test[test_spec.label_column])
    clf.fit(x_train, y_train)
    return {
        "accuracy": float((clf.predict(x_test) == y_test).mean()),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "n_classes": len(np.unique(y_train)),
        "seconds": time.perf_counter() - start,
    }


def _labelled_tables(train_spec, test_spec):
    tables = {}
    for key, spec in (("data.train", train_spec), ("eval.data", test_spec)):
        if not spec.label_column:
            raise ValueError(f"config key '{key}.label_column': the baseline needs labels")
        tables[key] = load_table(spec, key)
    train, test = tables["data.train"], tables["eval.data"]
    names = (class_names(train, train_spec.label_column), class_names(test, test_spec.label_column))
    if names[0] != names[1]:
        raise ValueError(f"data.train and eval.data label different classes: {names[0]} vs {names[1]}")
    return train, test


def preprocessed_inputs(model_cfg, modality: str, values: list, key: str) -> np.ndarray:
    """float32 [rows, D]: each row's input as the modality's eval preprocessor gives it, flattened."""
    import torch

    from align.modalities import build_adapter

    spec = model_cfg.modalities[modality]
    pre = build_adapter(spec.adapter_name(modality), spec.options).preprocessor()
    rows = []
    for i, raw in enumerate(values):
        out = pre(raw, train=False)
        if getattr(out, "x", None) is not None and getattr(out, "edge_index", None) is not None:
            out = _graph_summary(out)
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"config key '{key}': the {modality} input of row {i} is a {type(out).__name__}, not one "
                "fixed-size tensor, so there is no raw-input baseline for it"
            )
        rows.append(out.float().reshape(-1).numpy())
        if rows[-1].shape != rows[0].shape:
            raise ValueError(
                f"config key '{key}': {modality} inputs differ in size (row 0: {rows[0].size} values, "
                f"row {i}: {rows[-1].size}), so there is no raw-input baseline for them"
            )
    return np.stack(rows)


def _graph_summary(graph):
    """A graph as a fixed-size vector: mean and max of its node features, node and edge counts
    (the "bag of nodes, no message passing" reference for graph classification)."""
    import torch

    x = graph.x.float().reshape(graph.x.shape[0], -1)
    if not len(x):
        x = torch.zeros(1, graph.x.reshape(0, -1).shape[1])
    counts = torch.tensor([float(graph.num_nodes), float(graph.edge_index.shape[1])])
    return torch.cat([x.mean(0), x.max(0).values, counts])


def input_logreg(cfg, modality: str, *, C: float = 1.0, max_iter: int = 2000, seed: int = 0) -> dict[str, Any]:
    """LogisticRegression(C) on ``modality``'s raw input of ``data.train``'s rows, scored on
    ``eval.data``'s (TF-IDF for text). Returns what ``node_feature_logreg`` returns plus
    ``features`` (what the model was fitted on)."""
    import copy

    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from align.model.align_model import fit_adapters

    train_spec, test_spec = cfg.data.train, cfg.eval.data
    for key, spec in (("data.train", train_spec), ("eval.data", test_spec)):
        if modality not in spec.columns:
            raise ValueError(f"config key '{key}.columns': no '{modality}' column for the baseline")
    if modality not in cfg.model.modalities:
        raise ValueError(f"config key 'model.modalities': no '{modality}' tower to preprocess its input")
    train, test = _labelled_tables(train_spec, test_spec)
    col_train, col_test = train_spec.columns[modality], test_spec.columns[modality]
    start = time.perf_counter()
    if modality == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer

        steps, features = [TfidfVectorizer()], "TF-IDF of the words"
        x_train, x_test = [str(t) for t in train[col_train]], [str(t) for t in test[col_test]]
    else:
        model_cfg = copy.deepcopy(cfg.model)  # fitted options (vocabularies, statistics) from data.train
        fit_adapters(model_cfg, {modality: col_train}, train)
        x_train = preprocessed_inputs(model_cfg, modality, list(train[col_train]), "data.train")
        x_test = preprocessed_inputs(model_cfg, modality, list(test[col_test]), "eval.data")
        what = "mean/max node features and node/edge counts" if modality == "graph" else f"raw {modality} input"
        steps, features = [StandardScaler()], f"{what} ({x_train.shape[1]} values)"
        if x_train.shape[1] > MAX_RAW_DIM:
            steps.append(PCA(n_components=min(PCA_DIM, len(x_train)), random_state=seed))
            features += f", PCA to {steps[-1].n_components}"
    clf = make_pipeline(*steps, LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    return {**_fit_and_score(clf, (x_train, train, train_spec), (x_test, test, test_spec), start), "features": features}
