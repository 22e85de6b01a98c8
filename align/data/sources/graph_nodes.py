"""``graph-nodes``: one table row per node of ONE big graph (CiteSeer, Cora, PubMed, or your own
node + edge tables), for node-level graph <-> text alignment.

Why not one graph per row: ``pooling: center`` + ``ego_hops`` used to need every row to carry the
whole graph (10 GB of rows for CiteSeer's 3,327 nodes x 3,703 features). Here the graph is written
ONCE to a cache folder of plain ``.npy`` files and each row holds only a reference,
``graph = {"store": "<cache folder>", "center": node}``; the graph adapter opens the store once per
process (memory-mapped, so DataLoader workers share its pages) and cuts each sample's k-hop
neighbourhood on the fly (``align.modalities.graph_io.load_store``, ``GraphPreprocessor``).

``load_kwargs``:
  * ``format: planetoid`` (default): ``name`` citeseer | cora | pubmed; ``spec.data_dir`` is the
    folder holding ``raw/ind.<name>.*``. Read straight from ``raw/`` (the ``Planetoid`` dataset
    class would write, and later trust, a ``processed/`` torch pickle next to it, and the shared
    data folder must only be read): the raw pickles by ``align.io.safe_pickle``'s opcode reader
    (plain numeric arrays, CSR matrices and int lists only, checked against each other), then
    assembled by PyG's own ``read_planetoid_data`` (``align.data.sources.planetoid_raw``).
    ``spec.split``: train | val | test (the standard Planetoid masks: 120 / 500 / 1,000 nodes for
    CiteSeer) | all. Rows: ``node``, ``graph``, ``label`` (a
    ClassLabel with the dataset's field names) and ``split`` (train / val / test / other).
    CiteSeer's 15 isolated test-range nodes that have no features and no label in the raw files
    (PyG pads them with zeros, i.e. label 0) get label -1 and split ``unlabeled``: they only appear
    with ``split: all``; ``where: {label: {ge: 0}}`` drops them.
  * ``format: tables``: ``nodes`` (a csv / parquet / json(l) file, one row per node: id column
    ``node_id`` (default "node"), ``features`` (one list-valued column, or a list of numeric
    columns; optional), any other columns (text, label, ``split_column`` (default "split"), ...)),
    ``edges`` (csv / parquet / json(l) with ``source`` / ``target`` columns, names configurable),
    ``undirected`` (True: both directions of every edge, duplicates merged, as PyG's
    ``to_undirected``). Ids may be ints or strings; they are compared as text (a parquet 7 matches
    a csv "7") and numbered 0..N-1 in node-table order. ``spec.split`` picks rows by the split
    column ('all': every row). Rows: ``node``, ``graph``, the node table's other columns (the id
    column too, renamed ``node_id`` if it was called ``node``); feature columns go to the store.
  * ``cache_dir``: where stores are written (default ``$ALIGN_CACHE/nodes`` or
    ``~/.cache/align/nodes``).

The store is keyed by the *content identity* of the inputs (resolved path, size and mtime of every
input file, and the options that shape the graph), so an edited file gets a new store. It holds
only ``.npy`` arrays (``x`` float32 [N, F] when there are features, ``edge_index`` int64 [2, E],
``num_nodes``; Planetoid also ``y`` and its masks) read with ``allow_pickle=False``: nothing in a
cache folder can execute code. It is written to a temporary folder and renamed into place, so
concurrent runs either see a complete store or build their own and keep the first.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from align.data.sources import SOURCES
from align.data.sources.common import builtin_options
from align.data.sources.planetoid_raw import PARTS as PLANETOID_RAW
from align.data.sources.planetoid_raw import read_planetoid
from align.errors import DataError
from align.io.atomic import atomic_folder

STORE_VERSION = 1  # bump when the store's layout changes, so old caches are not misread
PLANETOID_CLASSES = {
    "citeseer": ["Agents", "AI", "DB", "IR", "ML", "HCI"],
    "cora": [
        "Case_Based",
        "Genetic_Algorithms",
        "Neural_Networks",
        "Probabilistic_Methods",
        "Reinforcement_Learning",
        "Rule_Learning",
        "Theory",
    ],
    "pubmed": ["Diabetes Mellitus Experimental", "Diabetes Mellitus Type 1", "Diabetes Mellitus Type 2"],
}
PLANETOID_SPLITS = ("train", "val", "test")
OPTIONS = {
    "format": "planetoid",
    "name": None,
    "nodes": None,
    "edges": None,
    "node_id": "node",
    "features": None,
    "source": "source",
    "target": "target",
    "undirected": True,
    "split_column": "split",
    "cache_dir": None,
}


@SOURCES.register("graph-nodes")
def graph_nodes(spec):
    """The ``graph-nodes`` builtin: a ``datasets.Dataset`` with one row per node of the split."""
    opts = builtin_options(spec, OPTIONS)
    if opts["format"] == "planetoid":
        return _planetoid(spec, opts)
    if opts["format"] == "tables":
        return _tables(spec, opts)
    raise DataError(f"load_kwargs.format must be 'planetoid' or 'tables', not {opts['format']!r}")


# ------------------------------------------------------------------------------------------------
# the store
# ------------------------------------------------------------------------------------------------


def cache_base(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    root = os.environ.get("ALIGN_CACHE")
    return Path(root) / "nodes" if root else Path.home() / ".cache" / "align" / "nodes"


def store_key(files: list[Path], options: dict[str, Any]) -> str:
    """Hash of what the graph is made from: each file's resolved path, size and mtime (cheap, and
    changes whenever the file is rewritten; hashing 100 MB of content on every run would not be),
    plus the options that shape the arrays."""
    ident = []
    for f in files:
        st = f.stat()
        ident.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"v": STORE_VERSION, "files": ident, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def write_store(base: Path, key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as ``<name>.npy`` into ``base/key`` atomically: a temp folder renamed into
    place. A concurrent run that renamed first wins; this one's copy is discarded."""
    final = base / key
    base.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final, exists="keep", perms=0o755) as tmp:  # a shared cache should be readable
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.asarray(arr), allow_pickle=False)
    return final


def read_array(store: Path, name: str) -> np.ndarray:
    return np.load(store / f"{name}.npy", mmap_mode="r", allow_pickle=False)


def _ref_column(store: Path, nodes: np.ndarray) -> list[dict[str, Any]]:
    path = str(store.resolve())
    return [{"store": path, "center": int(n)} for n in nodes]


# ------------------------------------------------------------------------------------------------
# format: planetoid
# ------------------------------------------------------------------------------------------------


def _planetoid(spec, opts: dict[str, Any]):
    import datasets

    name = str(opts["name"] or "").lower()
    if name not in PLANETOID_CLASSES:
        raise DataError(
            f"load_kwargs.name must be one of {sorted(PLANETOID_CLASSES)} for format 'planetoid', got {opts['name']!r}"
        )
    if not spec.data_dir:
        raise DataError("source 'graph-nodes' (planetoid) needs data_dir: the folder holding raw/ind.<name>.*")
    raw = Path(spec.data_dir) / "raw"
    files = [raw / f"ind.{name}.{s}" for s in PLANETOID_RAW]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"planetoid '{name}': missing raw files {missing}")
    if spec.split not in (*PLANETOID_SPLITS, "all"):
        raise DataError(f"planetoid splits are {list(PLANETOID_SPLITS)} or 'all', not '{spec.split}'")
    base = cache_base(opts["cache_dir"])
    key = store_key(files, {"format": "planetoid", "name": name})
    store = base / key
    if not store.is_dir():
        store = write_store(base, key, read_planetoid(raw, name))
    y = np.array(read_array(store, "y"))
    masks = {s: np.asarray(read_array(store, f"{s}_mask")) for s in PLANETOID_SPLITS}
    split = np.full(len(y), "other", dtype=object)
    split[y < 0] = "unlabeled"
    for s in PLANETOID_SPLITS:
        split[masks[s]] = s
    nodes = np.arange(len(y)) if spec.split == "all" else np.nonzero(masks[spec.split])[0]
    features = datasets.Features(
        {
            "node": datasets.Value("int64"),
            "graph": {"store": datasets.Value("string"), "center": datasets.Value("int64")},
            "label": datasets.ClassLabel(names=PLANETOID_CLASSES[name]),
            "split": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "node": nodes.tolist(),
            "graph": _ref_column(store, nodes),
            "label": y[nodes].tolist(),
            "split": split[nodes].tolist(),
        },
        features=features,
    )


# ------------------------------------------------------------------------------------------------
# format: tables
# ------------------------------------------------------------------------------------------------


def read_frame(path: Path, what: str):
    """A csv / parquet / json(l) file as a pandas DataFrame; errors name the load_kwargs key."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"load_kwargs.{what}: no file {path}")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet"):
            return pd.read_parquet(path)
        if suffix.endswith((".jsonl", ".json")):
            return pd.read_json(path, lines=suffix.endswith(".jsonl"))
        if suffix.endswith((".csv", ".csv.gz", ".tsv")):
            return pd.read_csv(path, sep="\t" if ".tsv" in suffix else ",")
    except (OSError, ValueError) as err:
        raise DataError(f"load_kwargs.{what}: cannot read {path}: {err}") from None
    raise DataError(f"load_kwargs.{what}: {path} is not .csv, .tsv, .parquet, .json or .jsonl")


def _features(df, spec_features: str | list[str], path: Path) -> np.ndarray:
    """Float32 [N, F] from one list-valued column (lists, or JSON text in a CSV) or numeric columns."""
    cols = [spec_features] if isinstance(spec_features, str) else list(spec_features)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"load_kwargs.features: columns {missing} are not in {path} (columns: {list(df.columns)})")
    if isinstance(spec_features, str):
        rows = []
        for i, v in enumerate(df[spec_features]):
            v = json.loads(v) if isinstance(v, str) else v
            try:
                rows.append(np.asarray(v, dtype=np.float32).reshape(-1))
            except (TypeError, ValueError):
                raise DataError(
                    f"load_kwargs.features: {path} row {i}, column '{spec_features}' is not a "
                    f"list of numbers: {str(v):.80}"
                ) from None
        widths = {len(r) for r in rows}
        if len(widths) > 1:
            i = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
            raise DataError(
                f"load_kwargs.features: {path} row {i} has {len(rows[i])} features, row 0 has {len(rows[0])}"
            )
        x = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    else:
        try:
            x = df[cols].to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise DataError(f"load_kwargs.features: {path} columns {cols} are not all numeric: {err}") from None
    bad = np.nonzero(~np.isfinite(x).all(axis=1))[0]
    if len(bad):
        raise DataError(f"load_kwargs.features: {path} row {int(bad[0])} holds NaN or infinite features")
    return x


def _edges(path: Path, opts: dict[str, Any], index: dict[str, int], nodes_path: Path) -> np.ndarray:
    """int64 [2, E] from the edge table, ids mapped to node numbers; unknown ids name their row."""
    df = read_frame(path, "edges")
    ends = []
    for key in ("source", "target"):
        col = opts[key]
        if col not in df.columns:
            raise DataError(
                f"load_kwargs.{key}: column '{col}' is not in the edge table {path} (columns: {list(df.columns)})"
            )
        ids = df[col].astype(str).to_numpy()
        mapped = np.fromiter((index.get(v, -1) for v in ids), dtype=np.int64, count=len(ids))
        if (mapped < 0).any():
            r = int(np.nonzero(mapped < 0)[0][0])
            raise DataError(
                f"edge table {path} row {r}: {key} {df[col].iloc[r]!r} (column '{col}') is not a "
                f"node id in {nodes_path} (column '{opts['node_id']}')"
            )
        ends.append(mapped)
    ei = np.stack(ends) if ends[0].size else np.zeros((2, 0), np.int64)
    if opts["undirected"] and ei.shape[1]:
        ei = np.unique(np.concatenate([ei, ei[::-1]], axis=1), axis=1)  # sorted by (source, target)
    return ei.astype(np.int64)


def _tables(spec, opts: dict[str, Any]):
    import datasets

    if not opts["nodes"] or not opts["edges"]:
        raise DataError("format 'tables' needs load_kwargs.nodes (node table) and load_kwargs.edges (edge table)")
    nodes_path, edges_path = Path(opts["nodes"]), Path(opts["edges"])
    df = read_frame(nodes_path, "nodes")
    id_col = opts["node_id"]
    if id_col not in df.columns:
        raise DataError(
            f"load_kwargs.node_id: column '{id_col}' is not in the node table {nodes_path} "
            f"(columns: {list(df.columns)})"
        )
    ids = df[id_col].astype(str).to_numpy()
    index: dict[str, int] = {}
    for i, v in enumerate(ids):
        if index.setdefault(v, i) != i:
            raise DataError(f"node table {nodes_path} row {i}: node id {v!r} already in row {index[v]}")
    feats = opts["features"]
    feat_cols = [] if feats is None else [feats] if isinstance(feats, str) else list(feats)
    shape_opts = {k: opts[k] for k in ("node_id", "features", "source", "target", "undirected")}
    base = cache_base(opts["cache_dir"])
    if not edges_path.is_file():
        raise DataError(f"load_kwargs.edges: no file {edges_path}")
    key = store_key([nodes_path, edges_path], {"format": "tables", **shape_opts})
    store = base / key
    if not store.is_dir():
        arrays = {
            "edge_index": _edges(edges_path, opts, index, nodes_path),
            "num_nodes": np.asarray(len(df), dtype=np.int64),
        }
        if feat_cols:
            arrays["x"] = _features(df, feats, nodes_path)
        store = write_store(base, key, arrays)
    keep = np.arange(len(df))
    split_col = opts["split_column"]
    if spec.split != "all":
        if split_col not in df.columns:
            raise DataError(
                f"split '{spec.split}' needs a '{split_col}' column in the node table {nodes_path} "
                f"(load_kwargs.split_column), or split: all"
            )
        values = df[split_col].astype(str).to_numpy()
        keep = np.nonzero(values == spec.split)[0]
        if not len(keep):
            raise DataError(
                f"no rows of {nodes_path} have {split_col} == '{spec.split}' (values: {sorted(set(values))[:10]})"
            )
    rest = df.drop(columns=feat_cols).iloc[keep].reset_index(drop=True)
    if split_col in rest.columns:
        rest[split_col] = rest[split_col].astype(str)
    if id_col == "node":
        if "node_id" in rest.columns:
            raise DataError(f"node table {nodes_path}: the id column 'node' becomes 'node_id', which exists")
        rest = rest.rename(columns={"node": "node_id"})
    if "graph" in rest.columns:
        raise DataError(f"node table {nodes_path}: column 'graph' is reserved for the graph reference")
    rest.insert(0, "node", keep.astype(np.int64))
    rest.insert(1, "graph", _ref_column(store, keep))
    return datasets.Dataset.from_pandas(rest, preserve_index=False)
