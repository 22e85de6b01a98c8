"""``tu-dataset``: a TU-format folder (``<data_dir>/<name>/raw/<name>_A.txt`` ...) read by
``torch_geometric.datasets.TUDataset`` into a table with one graph per row, split by stratified
k-fold cross-validation (the protocol graph-classification papers report).

Rows: ``graph`` (a dict ``edge_index`` [2, E], ``x`` [N, F] float, ``edge_attr`` [E, F_e] float when
the dataset has edge labels, ``num_nodes``; the graph adapter reads it), ``label`` (0..C-1, PyG's
remapping of the file's labels in sorted order, e.g. MUTAG -1/1 -> 0/1) and ``graph_id``.
``load_kwargs``: ``name`` (required), ``folds`` (10), ``fold`` (0), ``seed`` (0): split ``test`` is
fold ``fold`` of a shuffled ``StratifiedKFold``, ``train`` the other folds, ``all`` every graph;
``use_node_attr`` (False: x is the one-hot node label; True appends continuous node attributes);
``cache_dir``: where PyG writes its ``processed/`` files (default ``~/.cache/align/tu``), so the
source folder is only read, never written.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from align.builtin_data import DataError, builtin_options, fold_rows


def _cache_root(source: Path, cache_dir: str | None, name: str, use_node_attr: bool) -> Path:
    base = Path(cache_dir or os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align")) / "tu"
    key = hashlib.sha1(f"{source.resolve()}|{use_node_attr}".encode()).hexdigest()[:12]
    root = base / key
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in (source / name / "raw").iterdir():  # link the raw files; PyG only reads them
        link = raw / f.name
        if not link.exists():
            try:
                link.symlink_to(f.resolve())
            except OSError:
                link.write_bytes(f.read_bytes())
    return root


def tu_dataset(spec):
    import datasets

    opts = builtin_options(spec, {"name": None, "folds": 10, "fold": 0, "seed": 0, "use_node_attr": False,
                                  "cache_dir": None})
    name = opts["name"]
    if not name or not spec.data_dir:
        raise DataError("source 'tu-dataset' needs data_dir (the folder holding <name>/raw) and "
                        "load_kwargs.name, e.g. MUTAG")
    source = Path(spec.data_dir)
    if not (source / name / "raw" / f"{name}_A.txt").is_file():
        raise DataError(f"no TU dataset '{name}' in {source}: expected {source / name / 'raw' / (name + '_A.txt')}")
    import modalities.graph_io  # noqa: F401  (quiets torch_geometric's import-time warning)
    from torch_geometric.datasets import TUDataset

    root = _cache_root(source, opts["cache_dir"], name, bool(opts["use_node_attr"]))
    try:
        ds = TUDataset(str(root), name, use_node_attr=bool(opts["use_node_attr"]))
    except Exception as err:  # PyG raises plain errors on malformed files; name the folder
        raise DataError(f"cannot read TU dataset {source / name}: {err!r}") from None
    labels = ds.y.numpy()
    rows = fold_rows(labels, spec.split, int(opts["folds"]), int(opts["fold"]), int(opts["seed"]))
    graphs = []
    for i in rows:
        g = ds[int(i)]
        item = {"edge_index": g.edge_index.tolist(), "num_nodes": int(g.num_nodes),
                "x": g.x.float().tolist() if g.x is not None else None}
        if g.edge_attr is not None:
            item["edge_attr"] = g.edge_attr.float().tolist()
        graphs.append(item)
    return datasets.Dataset.from_dict({"graph": graphs, "label": labels[rows].astype(np.int64).tolist(),
                                       "graph_id": rows.astype(np.int64).tolist()})
