"""``tu-dataset``: a TU-format folder (``<data_dir>/<name>/raw/<name>_A.txt`` ...) read by PyG's
``read_tu_data`` into a table with one graph per row, split by stratified
k-fold cross-validation (the protocol graph-classification papers report).

Rows: ``graph`` (a dict ``edge_index`` [2, E], ``x`` [N, F] float, ``edge_attr`` [E, F_e] float when
the dataset has edge labels, ``num_nodes``; the graph adapter reads it), ``label`` (0..C-1, PyG's
remapping of the file's labels in sorted order, e.g. MUTAG -1/1 -> 0/1) and ``graph_id``.
``load_kwargs``: ``name`` (required), ``folds`` (10), ``fold`` (0), ``seed`` (0): split ``test`` is
fold ``fold`` of a shuffled ``StratifiedKFold``, ``train`` the other folds, ``all`` every graph;
``use_node_attr`` (False: x is the one-hot node label; True appends continuous node attributes).

Nothing is cached: the raw text files are parsed by PyG's own reader (``read_tu_data``, the
function ``TUDataset.process`` calls) on every load — under a second for PROTEINS' 43k nodes. The
``TUDataset`` class would instead write a ``processed/`` folder and read it back with
``torch.load(weights_only=False)``, so a crafted file planted in that cache ran code during
``align train``, and a cache keyed by the folder's path kept serving old labels after the raw
files were edited. The source folder is only read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from align.data.sources import SOURCES
from align.data.sources.common import builtin_options, fold_rows
from align.errors import DataError


def read_tu_graphs(source: Path, name: str, use_node_attr: bool):
    """PyG's ``read_tu_data`` on ``<source>/<name>/raw`` (no processed cache), with the same column
    choices ``TUDataset(use_node_attr, use_edge_attr=False)`` makes; returns a dataset of graphs."""
    from torch_geometric.data import InMemoryDataset
    from torch_geometric.io import read_tu_data

    import align.modalities.graph_io  # noqa: F401  (quiets torch_geometric's import-time warning)

    data, slices, sizes = read_tu_data(str(source / name / "raw"), name)
    if data.x is not None and not use_node_attr:  # continuous attributes come first in x
        data.x = data.x[:, sizes["num_node_attributes"] :]
    if data.edge_attr is not None:  # TUDataset's default use_edge_attr=False keeps only edge labels
        data.edge_attr = data.edge_attr[:, sizes["num_edge_attributes"] :]
    graphs = InMemoryDataset()  # no root: nothing is downloaded, processed or written
    graphs.data, graphs.slices = data, slices
    return graphs


@SOURCES.register("tu-dataset")
def tu_dataset(spec):
    import datasets

    opts = builtin_options(spec, {"name": None, "folds": 10, "fold": 0, "seed": 0, "use_node_attr": False})
    name = opts["name"]
    if not name or not spec.data_dir:
        raise DataError(
            "source 'tu-dataset' needs data_dir (the folder holding <name>/raw) and load_kwargs.name, e.g. MUTAG"
        )
    source = Path(spec.data_dir)
    if not (source / name / "raw" / f"{name}_A.txt").is_file():
        raise DataError(f"no TU dataset '{name}' in {source}: expected {source / name / 'raw' / (name + '_A.txt')}")
    try:
        ds = read_tu_graphs(source, name, bool(opts["use_node_attr"]))
    except Exception as err:  # PyG raises plain errors on malformed files; name the folder
        raise DataError(f"cannot read TU dataset {source / name}: {err!r}") from None
    labels = ds.y.numpy()
    rows = fold_rows(labels, spec.split, int(opts["folds"]), int(opts["fold"]), int(opts["seed"]))
    graphs = []
    for i in rows:
        g = ds[int(i)]
        item = {
            "edge_index": g.edge_index.tolist(),
            "num_nodes": int(g.num_nodes),
            "x": g.x.float().tolist() if g.x is not None else None,
        }
        if g.edge_attr is not None:
            item["edge_attr"] = g.edge_attr.float().tolist()
        graphs.append(item)
    return datasets.Dataset.from_dict(
        {"graph": graphs, "label": labels[rows].astype(np.int64).tolist(), "graph_id": rows.astype(np.int64).tolist()}
    )
