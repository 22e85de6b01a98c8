"""Planetoid's raw folder (``raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``) as checked plain
arrays, assembled by PyG's own ``read_planetoid_data`` (used by the ``graph-nodes`` source).

Why not PyG's reader as it is: it ``pickle.load``s seven files, and even a restricted unpickler lets
such a file build an object array of raw pointers or set attributes on a CSR matrix (see
``align.io.safe_pickle``). Here each pickle goes through ``load_pickle`` (only numeric arrays, CSR
matrices and a dict of int lists come out), the eight parts are checked against each other (feature
and label widths, row counts, every graph and test index a node of the graph), and then PyG's
reader runs with its ``read_file`` answering from those checked parts. So the arrays are exactly
PyG's (CiteSeer's isolated test nodes zero-padded the same way, the same edge order), and nothing
of a file is interpreted by anything but ``load_pickle`` and the integer parser below.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from align.errors import DataError
from align.io.safe_pickle import load_pickle

PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
VAL_NODES = 500  # PyG's validation range: the 500 nodes after the training rows
_INDEX_LINE = re.compile(r"[0-9]+")


def read_planetoid(raw: Path, name: str) -> dict[str, np.ndarray]:
    """The store arrays of Planetoid ``name`` (x, edge_index, num_nodes, y, masks) from ``raw/``.

    CiteSeer's test-range nodes that the raw files leave out (PyG pads them with zero features and
    label 0) get label -1 here, so a split never counts them as class 0."""
    import torch
    import torch_geometric.io.planetoid as planetoid_io

    import align.modalities.graph_io  # noqa: F401  (quiets torch_geometric's import-time warning)

    try:
        parts = read_parts(raw, name)
    except DataError as err:
        raise DataError(f"cannot read planetoid '{name}' from {raw}: {err}") from None

    def read_file(folder: str, prefix: str, part: str) -> Any:
        """PyG's ``read_file``, on the checked parts: the same tensors it makes from the files."""
        out = parts[part]
        if part == "test.index":
            return torch.from_numpy(out)
        if part == "graph":
            return out
        out = out.todense() if hasattr(out, "todense") else out
        return torch.from_numpy(out).to(torch.float)

    original = planetoid_io.read_file
    planetoid_io.read_file = read_file
    try:
        data = planetoid_io.read_planetoid_data(str(raw), name)
    except Exception as err:  # the parts are checked; anything left still names the folder
        raise DataError(f"cannot read planetoid '{name}' from {raw}: {err!r}") from None
    finally:
        planetoid_io.read_file = original
    y = data.y.numpy().astype(np.int64)
    test_mask = data.test_mask.numpy()
    if name == "citeseer":  # the reader's zero padding of the test range: nodes with no label
        test_idx = np.nonzero(test_mask)[0]
        pad = (np.arange(len(y)) >= test_idx.min()) & ~test_mask
        y[pad] = -1
    return {
        "x": data.x.numpy().astype(np.float32),
        "edge_index": data.edge_index.numpy().astype(np.int64),
        "num_nodes": np.asarray(data.num_nodes, dtype=np.int64),
        "y": y,
        "train_mask": data.train_mask.numpy(),
        "val_mask": data.val_mask.numpy(),
        "test_mask": test_mask,
    }


def read_parts(raw: Path, name: str) -> dict[str, Any]:
    """The eight raw files as plain values (2-d arrays / CSR matrices, a dict of int lists, an int64
    index array), checked one by one and against each other; a ``DataError`` names the file."""
    parts: dict[str, Any] = {}
    for part in PARTS[:-1]:
        path = raw / f"ind.{name}.{part}"
        value = load_pickle(path)
        parts[part] = _graph(value, path) if part == "graph" else _matrix(value, path)
    parts["test.index"] = _test_index(raw / f"ind.{name}.test.index")
    _check_together(parts, raw, name)
    return parts


def _matrix(value: Any, path: Path) -> Any:
    import scipy.sparse

    if not (isinstance(value, np.ndarray) or scipy.sparse.issparse(value)) or value.ndim != 2:
        raise DataError(f"{path}: holds {type(value).__name__}, not a 2-d array or CSR matrix")
    return value


def _graph(value: Any, path: Path) -> dict[int, list[int]]:
    if type(value) is not dict:
        raise DataError(f"{path}: holds {type(value).__name__}, not a dict of node -> neighbour list")
    for node, neighbours in value.items():
        if type(node) is not int or node < 0 or type(neighbours) is not list:
            raise DataError(f"{path}: entry {node!r}: not a node number with a list of neighbours")
        if not all(type(v) is int and v >= 0 for v in neighbours):
            raise DataError(f"{path}: node {node}'s neighbours are not all node numbers: {neighbours[:10]!r}")
    return value


def _test_index(path: Path) -> np.ndarray:
    """One node number per line, parsed as PyG's ``read_txt_array`` splits them (no float, no sign)."""
    try:
        lines = path.read_bytes().decode("ascii").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    values = []
    for i, line in enumerate(lines):
        token = line.split()
        if len(token) != 1 or not _INDEX_LINE.fullmatch(token[0]):
            raise DataError(f"{path} line {i + 1}: {line[:40]!r} is not one node number")
        values.append(int(token[0]))
    if not values:
        raise DataError(f"{path}: no test node numbers")
    return np.asarray(values, dtype=np.int64)


def _check_together(parts: dict[str, Any], raw: Path, name: str) -> None:
    """What PyG's assembly indexes with must fit: then no index it computes is out of range."""
    x, tx, allx, y, ty, ally, graph, test = (parts[p] for p in PARTS)
    where = f"ind.{name}.*"
    widths = {p: parts[p].shape[1] for p in ("x", "tx", "allx")}
    if len(set(widths.values())) != 1:
        raise DataError(f"{raw}/{where}: feature widths differ: {widths}")
    classes = {p: parts[p].shape[1] for p in ("y", "ty", "ally")}
    if len(set(classes.values())) != 1 or not y.shape[1]:
        raise DataError(f"{raw}/{where}: label widths differ or are 0: {classes}")
    rows = {p: parts[p].shape[0] for p in PARTS[:6]} | {"test.index": len(test)}
    if not (rows["x"] == rows["y"] <= rows["allx"] == rows["ally"] and rows["tx"] == rows["ty"] == len(test)):
        raise DataError(f"{raw}/{where}: row counts do not match (x = y <= allx = ally, tx = ty = test.index): {rows}")
    if len(np.unique(test)) != len(test):
        raise DataError(f"{raw}/ind.{name}.test.index: a node number appears twice")
    test_rows = int(test.max() - test.min()) + 1 if name == "citeseer" else len(tx)
    nodes = allx.shape[0] + test_rows
    if test.max() >= nodes or rows["y"] + VAL_NODES > nodes:
        raise DataError(
            f"{raw}/ind.{name}.test.index: node numbers up to {int(test.max())}, or {rows['y']} training + "
            f"{VAL_NODES} validation nodes, do not fit the {nodes} nodes of {where}"
        )
    bad = next((k for k, vs in graph.items() if k >= nodes or any(v >= nodes for v in vs)), None)
    if bad is not None:
        raise DataError(f"{raw}/ind.{name}.graph: node {bad} or one of its neighbours is not below {nodes}")
