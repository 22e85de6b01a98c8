"""Raw graph samples -> ``torch_geometric.data.Data``, checked (runs in DataLoader workers).

Accepted raw samples:
  * a ``torch_geometric.data.Data`` (``x``, ``edge_index``, optional ``edge_attr``),
  * a .graphml / .gml / .gexf file path (read with networkx, then as a networkx graph),
  * a SMILES string (a molecule, via rdkit + ``torch_geometric.utils.from_smiles``: 9 integer atom
    features, 3 integer bond features; rdkit's parse is checked first, because ``from_smiles``
    turns an unparsable string into an empty graph without a word),
  * a networkx graph (``from_networkx``; node attributes named by ``node_attrs`` become ``x``),
  * a dict of arrays, e.g. one row of an HF table or of ``pack_columns``: ``edge_index`` ([2, E]
    or [E, 2]), node features under ``x`` / ``node_feat`` / ``node_features``, edge features under
    ``edge_attr`` / ``edge_feat`` / ``edge_features``, optional ``num_nodes``; for node-level use
    also ``center`` (the node whose embedding is wanted),
  * a stored-graph reference ``{"store": folder, "center": node}`` (rows of the ``graph-nodes``
    source, ``align.data.sources.graph_nodes``): the folder's ``.npy`` arrays are opened once per process
    (memory-mapped, read-only, ``allow_pickle=False``) and every sample shares them; the graph
    preprocessor then cuts the centre's k-hop neighbourhood (it refuses a store without
    ``ego_hops``, which would put the whole graph in every sample).

Undirected graphs keep both directions of every edge, as PyG does. A graph with no nodes is an
error; a graph with nodes but no edges (a single ion, an isolated atom) is legal data for message
passing (each node keeps its own features) unless ``require_edges`` is set.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from align.errors import SampleError

# torch_geometric scripts a few helpers at import time; torch 2.14 warns about each of them
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

NODE_KEYS = ("x", "node_feat", "node_features")
EDGE_KEYS = ("edge_attr", "edge_feat", "edge_features")
GRAPH_FILES = {".graphml": "read_graphml", ".gml": "read_gml", ".gexf": "read_gexf"}


def smiles_vocab() -> tuple[list[int], list[int]]:
    """Category counts of ``from_smiles``' atom (9) and bond (3) feature columns."""
    from torch_geometric.utils.smiles import e_map, x_map

    return [len(v) for v in x_map.values()], [len(v) for v in e_map.values()]


def graph_from_smiles(smiles: str):
    from rdkit import Chem, RDLogger
    from torch_geometric.utils import from_smiles

    RDLogger.DisableLog("rdApp.*")  # the SampleError below says what failed, once
    if not smiles.strip():
        raise SampleError("empty SMILES string")
    if Chem.MolFromSmiles(smiles) is None:
        raise SampleError(f"unparsable SMILES {smiles!r:.120}")
    return from_smiles(smiles)


def _first(raw: dict, keys: Sequence[str]) -> Any:
    for k in keys:
        if raw.get(k) is not None:
            return raw[k]
    return None


def _tensor(value: Any, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    except (ValueError, TypeError) as err:
        raise SampleError(f"graph field '{name}' is not a rectangular array: {err}") from None
    return t.to(dtype) if dtype is not None else t


def graph_from_dict(raw: dict):
    """Edge list + feature arrays (an HF table row) -> ``Data``."""
    from torch_geometric.data import Data

    if raw.get("edge_index") is None:
        raise SampleError(f"graph dict needs 'edge_index' (keys: {sorted(raw)})")
    ei = _tensor(raw["edge_index"], "edge_index", torch.long)
    if ei.numel() == 0:
        ei = torch.zeros(2, 0, dtype=torch.long)
    elif ei.dim() == 2 and ei.shape[0] != 2 and ei.shape[1] == 2:
        ei = ei.T
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise SampleError(f"edge_index must be [2, E] or [E, 2], got {list(ei.shape)}")
    data = Data(edge_index=ei.contiguous())
    x, ea = _first(raw, NODE_KEYS), _first(raw, EDGE_KEYS)
    if x is not None:
        data.x = _tensor(x, "x")
        if data.x.dim() == 1:
            data.x = data.x[:, None]
    if ea is not None:
        data.edge_attr = _tensor(ea, "edge_attr")
        if data.edge_attr.dim() == 1:
            data.edge_attr = data.edge_attr[:, None]
        if data.edge_attr.numel() == 0:
            data.edge_attr = data.edge_attr.reshape(0, max(1, data.edge_attr.shape[-1]))
    if raw.get("num_nodes") is not None:
        data.num_nodes = int(raw["num_nodes"])
    elif x is None:
        data.num_nodes = int(ei.max()) + 1 if ei.numel() else 0
    if raw.get("center") is not None:
        data.center = torch.tensor([int(raw["center"])])
    return data


def graph_from_networkx(graph, node_attrs: Sequence[str] | None, edge_attrs: Sequence[str] | None):
    from torch_geometric.utils import from_networkx

    try:
        return from_networkx(
            graph,
            group_node_attrs=list(node_attrs) if node_attrs else None,
            group_edge_attrs=list(edge_attrs) if edge_attrs else None,
        )
    except (KeyError, ValueError, TypeError) as err:
        raise SampleError(f"networkx graph: cannot read attributes {node_attrs} / {edge_attrs}: {err!r}") from None


def read_graph_file(path: Path):
    import networkx as nx

    reader = GRAPH_FILES.get(path.suffix.lower())
    if reader is None:
        raise SampleError(f"{path}: unknown graph file type (known: {sorted(GRAPH_FILES)})")
    try:
        return getattr(nx, reader)(path)
    except (OSError, nx.NetworkXError, ValueError, KeyError, SyntaxError) as err:  # XML ParseError
        raise SampleError(f"{path}: cannot read graph: {err}") from None


_STORES: dict[str, Any] = {}  # store folder -> its whole graph, opened once per process


def is_store_ref(raw: Any) -> bool:
    """A ``{"store": folder, "center": node}`` row of the ``graph-nodes`` source."""
    return isinstance(raw, dict) and raw.get("store") is not None


def load_store(path: str | Path):
    """The whole graph of a store folder as a ``Data`` whose tensors view the memory-mapped
    ``.npy`` files (no copy: forked DataLoader workers share the pages). Checked once here
    (edge range, feature rows, NaN), so per-sample work is only the neighbourhood cut. The tensors
    are read-only: never write into them."""
    from torch_geometric.data import Data

    key = str(path)
    if key in _STORES:
        return _STORES[key]
    folder = Path(path)
    try:
        ei = np.load(folder / "edge_index.npy", mmap_mode="r", allow_pickle=False)
        n = int(np.load(folder / "num_nodes.npy", allow_pickle=False))
        x = np.load(folder / "x.npy", mmap_mode="r", allow_pickle=False) if (folder / "x.npy").is_file() else None
    except (OSError, ValueError) as err:
        raise SampleError(
            f"graph store {folder}: cannot read it ({err}); was the cache folder removed? "
            f"Loading the table again rebuilds it"
        ) from None
    if ei.ndim != 2 or ei.shape[0] != 2 or ei.dtype != np.int64:
        raise SampleError(f"graph store {folder}: edge_index is {ei.dtype} {list(ei.shape)}, expected int64 [2, E]")
    with warnings.catch_warnings():  # read-only mmap -> torch warns that the tensor is not writable
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        data = Data(edge_index=torch.from_numpy(ei), num_nodes=n)
        if x is not None:
            data.x = torch.from_numpy(x)
    try:
        check_graph(data)
    except SampleError as err:
        raise SampleError(f"graph store {folder}: {err}") from None
    _STORES[key] = data
    return data


def graph_from_store(raw: dict):
    """A store reference -> a ``Data`` sharing the stored tensors (not cloned) with ``center`` set."""
    from torch_geometric.data import Data

    if raw.get("center") is None:
        raise SampleError(f"graph store reference needs 'center' (keys: {sorted(raw)})")
    whole = load_store(raw["store"])
    out = Data(edge_index=whole.edge_index, num_nodes=whole.num_nodes, center=torch.tensor([int(raw["center"])]))
    if getattr(whole, "x", None) is not None:
        out.x = whole.x
    return out


def to_graph(raw: Any, *, node_attrs: Sequence[str] | None = None, edge_attrs: Sequence[str] | None = None):
    """Any accepted raw sample -> ``Data`` (not yet checked; see :func:`check_graph`)."""
    from torch_geometric.data import Data

    if isinstance(raw, Data):
        return raw.clone()
    if isinstance(raw, Path) or (isinstance(raw, str) and Path(raw).suffix.lower() in GRAPH_FILES):
        return graph_from_networkx(read_graph_file(Path(raw)), node_attrs, edge_attrs)
    if isinstance(raw, str):
        return graph_from_smiles(raw)
    if is_store_ref(raw):
        return graph_from_store(raw)
    if isinstance(raw, dict):
        return graph_from_dict(raw)
    if hasattr(raw, "nodes") and hasattr(raw, "edges") and hasattr(raw, "is_directed"):
        return graph_from_networkx(raw, node_attrs, edge_attrs)
    raise SampleError(
        f"graph sample must be a SMILES string, a torch_geometric Data, a networkx graph "
        f"or a dict with edge_index, got {type(raw).__name__}"
    )


def check_graph(data, *, require_edges: bool = False) -> None:
    """Reject graphs a GNN cannot encode meaningfully; messages say what is wrong."""
    n = data.num_nodes
    if not n:
        raise SampleError("empty graph (0 nodes)")
    ei = data.edge_index
    if ei is None or ei.numel() == 0:
        if require_edges:
            raise SampleError(f"graph has {n} nodes and no edges (require_edges is set)")
    elif int(ei.min()) < 0 or int(ei.max()) >= n:
        raise SampleError(
            f"edge_index refers to node {int(ei.max()) if int(ei.max()) >= n else int(ei.min())} "
            f"but the graph has {n} nodes"
        )
    for name in ("x", "edge_attr"):
        t = getattr(data, name, None)
        if t is None:
            continue
        rows = n if name == "x" else (0 if ei is None else ei.shape[1])
        if t.shape[0] != rows:
            raise SampleError(f"graph field '{name}' has {t.shape[0]} rows, expected {rows}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SampleError(f"graph field '{name}' holds NaN or infinite values")
    center = getattr(data, "center", None)
    if center is not None and not 0 <= int(center) < n:
        raise SampleError(f"center node {int(center)} is outside the graph's {n} nodes")
