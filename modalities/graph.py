"""Graph adapter: a torch_geometric GNN (GIN by default, GCN, GAT or GATv2) with global pooling.

preprocess: raw sample (SMILES, PyG ``Data``, networkx graph, edge-list dict; see
  ``align.modalities.graph_io``) -> a checked ``Data`` holding only what the encoder reads; collate is
  PyG's ``Batch.from_data_list`` (one disjoint union graph per batch, no padding).
trunk: node features -> ``width`` (a linear layer for float features, a sum of per-column
  embeddings for integer ones such as ``from_smiles``' atom features, a learned constant when a
  graph has none), then ``layers`` message-passing layers, each conv -> norm -> ReLU -> dropout
  with a residual connection. Edge features enter GIN as GINE (Hu et al. 2020) and GAT / GATv2
  through their ``edge_dim``; GCN has no edge features (only a scalar weight), so giving them is an error.
readout: ``mean`` / ``sum`` / ``max`` / ``attention`` (gated attention pooling) over each graph's
  nodes, of the last layer or of all layers concatenated (``jk: cat``).

Node-level use (one embedding per node of a big graph): ``GraphAdapter.node_features(batch)``
returns ``[num_nodes, feature_dim]`` for every node. To train node <-> text pairs, give each row a
``center`` node and set ``pooling: center`` (the embedding is that node's), optionally with
``ego_hops: k`` so each sample carries only the k-hop neighbourhood of its node (a GIN with
``layers <= k`` sees exactly what it would see on the whole graph; GCN's degree normalisation
also reads the degrees of the outermost nodes, so it is exact for ``layers <= k - 1``).

One big graph without a copy per row: the ``graph-nodes`` source (``align.data.sources.graph_nodes``) stores
the graph once and gives each row ``{"store": folder, "center": node}``; the preprocessor opens
the store once per process and cuts the centre's ego net with ``torch_geometric.utils.
k_hop_subgraph`` on the shared (memory-mapped) edge list. That is the sampler because PyG's
``NeighborLoader`` / ``NeighborSampler`` need pyg-lib or torch-sparse, and neither installs here
(pyg-lib has no distribution for this platform in the package index; torch-sparse fails to
build). ``k_hop_subgraph`` costs O(E * k) per sample (boolean masks over all edges): fine for
Planetoid-sized graphs (CiteSeer's 9k edges, PubMed's 89k); for graphs with many millions of
edges a CSR neighbour sampler would be the next step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from align.errors import SampleError
from align.modalities.base import AdapterOptions, ModalityAdapter, Preprocessor
from align.modalities.graph_io import check_graph, is_store_ref, smiles_vocab, to_graph
from align.modalities.layers import checkpoint_module_, norm_layer
from align.registry import ADAPTERS

Vocab = list[int] | Literal["smiles", "fit"] | None


class GraphOptions(AdapterOptions):
    encoder: Literal["gin", "gcn", "gat", "gatv2"] = "gin"
    layers: int = Field(3, gt=0)
    width: int = Field(128, gt=0)
    heads: int = Field(4, gt=0, description="'gat' / 'gatv2' attention heads (width must divide by it)")
    dropout: float = Field(0.0, ge=0, lt=1)
    norm: Literal["batch", "layer", "none"] = "batch"
    pooling: Literal["mean", "sum", "max", "attention", "center"] = "mean"
    jk: Literal["last", "cat"] = Field(
        "last", description="read out the last layer, or all layers concatenated (feature_dim = width * (layers + 1))"
    )
    node_dim: int | None = Field(None, gt=0, description="width of float node features x [N, node_dim]")
    node_vocab: Vocab = Field(
        None,
        description="category counts of integer node feature columns, "
        "'smiles' (from_smiles' 9 atom features), or 'fit' (1 + the largest "
        "category of each column in the training graphs, stored in the run's config)",
    )
    edge_dim: int | None = Field(None, gt=0, description="width of float edge features")
    edge_vocab: Vocab = Field(
        None,
        description="category counts of integer edge feature columns, "
        "'smiles' (from_smiles' 3 bond features), or 'fit' (as node_vocab)",
    )
    node_attrs: list[str] | None = Field(None, description="networkx node attributes stacked into x")
    edge_attrs: list[str] | None = Field(None, description="networkx edge attributes stacked into edge_attr")
    require_edges: bool = Field(False, description="treat a graph without edges as a bad sample")
    ego_hops: int | None = Field(
        None, gt=0, description="node-level: keep only the k-hop subgraph around each sample's center node"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "GraphOptions":
        for kind in ("node", "edge"):
            if getattr(self, f"{kind}_dim") is not None and getattr(self, f"{kind}_vocab") is not None:
                raise ValueError(f"give {kind}_dim (float features) or {kind}_vocab (integer), not both")
        if self.encoder == "gcn" and (self.edge_dim or self.edge_vocab):
            raise ValueError("encoder 'gcn' takes no edge features (edge_dim / edge_vocab); use 'gin' or 'gat'")
        if self.encoder in ("gat", "gatv2") and self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.ego_hops is not None and self.pooling != "center":
            raise ValueError("ego_hops is for node-level use: set pooling: center")
        return self

    def vocab(self, kind: str) -> list[int] | None:
        v = getattr(self, f"{kind}_vocab")
        if v == "fit":
            raise ValueError(
                f"{kind}_vocab 'fit' is counted on the training graphs by GraphAdapter.fit "
                f"(align train runs it); give the category counts to build the adapter directly"
            )
        if v == "smiles":
            return smiles_vocab()[0 if kind == "node" else 1]
        return v

    def has_edge_features(self) -> bool:
        return self.edge_dim is not None or self.edge_vocab is not None


# ------------------------------------------------------------------------------------------------
# preprocessing (DataLoader workers)
# ------------------------------------------------------------------------------------------------


def _conform(t: torch.Tensor | None, dim: int | None, vocab: list[int] | None, rows: int, what: str):
    """Features as the encoder reads them: float [rows, dim], int64 [rows, len(vocab)], or None."""
    if dim is None and vocab is None:
        return None
    width = dim if dim is not None else len(vocab)
    if t is None:
        if rows == 0:
            return torch.zeros(0, width, dtype=torch.float32 if dim is not None else torch.long)
        raise SampleError(
            f"graph has no {what} features, but the encoder expects "
            f"{'dim ' + str(dim) if dim is not None else 'vocab ' + str(vocab)}"
        )
    if t.dim() != 2 or t.shape[1] != width:
        raise SampleError(f"{what} features have shape {list(t.shape)}, expected [{rows}, {width}]")
    if dim is not None:
        return t.float()
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise SampleError(f"{what} features must be integer categories for {what}_vocab")
    t = t.long()
    if rows and ((t < 0).any() or (t >= torch.tensor(vocab)).any()):
        raise SampleError(
            f"{what} feature categories out of range for vocab {vocab}: max per column {t.max(0).values.tolist()}"
        )
    return t


class GraphPreprocessor(Preprocessor):
    deterministic = True  # no augmentation: training and evaluation preprocess alike

    def __init__(self, options: GraphOptions) -> None:
        self.o = options
        self.node_vocab, self.edge_vocab = options.vocab("node"), options.vocab("edge")

    def __call__(self, raw: Any, *, train: bool):
        from torch_geometric.data import Data

        g = to_graph(raw, node_attrs=self.o.node_attrs, edge_attrs=self.o.edge_attrs)
        stored = is_store_ref(raw)
        if stored and self.o.ego_hops is None:
            raise SampleError(
                f"graph sample refers to a stored graph of {g.num_nodes} nodes ({raw['store']}); "
                "set the graph options pooling: center and ego_hops: k (e.g. 2) so a sample "
                "is its centre's k-hop neighbourhood, not the whole graph"
            )
        if self.o.ego_hops is not None:
            g = self._ego(g, checked=stored)
        check_graph(g, require_edges=self.o.require_edges)
        out = Data(edge_index=g.edge_index.long(), num_nodes=g.num_nodes)
        x = _conform(getattr(g, "x", None), self.o.node_dim, self.node_vocab, g.num_nodes, "node")
        e = _conform(getattr(g, "edge_attr", None), self.o.edge_dim, self.edge_vocab, g.edge_index.shape[1], "edge")
        if x is not None:
            out.x = x
        if e is not None:
            out.edge_attr = e
        if self.o.pooling == "center":
            if getattr(g, "center", None) is None:
                raise SampleError("pooling 'center' needs each sample's 'center' node")
            out.center = g.center.long().reshape(1)
        return out

    def _ego(self, g, checked: bool = False):
        """The centre's k-hop neighbourhood, relabelled; only the kept rows of ``x`` / ``edge_attr``
        are copied (a stored graph's tensors are shared, never cloned). ``checked``: the whole
        graph was already checked (a store, checked once when opened), so only the centre is."""
        from torch_geometric.utils import k_hop_subgraph

        if getattr(g, "center", None) is None:
            raise SampleError("ego_hops needs each sample's 'center' node")
        if not checked:
            check_graph(g)
        elif not 0 <= int(g.center) < g.num_nodes:
            raise SampleError(f"center node {int(g.center)} is outside the graph's {g.num_nodes} nodes")
        subset, ei, mapping, edge_mask = k_hop_subgraph(
            int(g.center), self.o.ego_hops, g.edge_index, relabel_nodes=True, num_nodes=g.num_nodes
        )
        sub = g.__class__(edge_index=ei, num_nodes=len(subset), center=mapping.reshape(1))
        if getattr(g, "x", None) is not None:
            sub.x = g.x[subset]
        if getattr(g, "edge_attr", None) is not None:
            sub.edge_attr = g.edge_attr[edge_mask]
        return sub

    def collate(self, items: list) -> Any:
        from torch_geometric.data import Batch

        return Batch.from_data_list(items)


# ------------------------------------------------------------------------------------------------
# encoder
# ------------------------------------------------------------------------------------------------


class FeatureEncoder(nn.Module):
    """Float features -> Linear; integer category columns -> sum of embeddings (OGB's AtomEncoder);
    no features -> one learned vector for every node / edge."""

    def __init__(self, dim: int | None, vocab: list[int] | None, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, width) if dim is not None else None
        self.embeddings = nn.ModuleList(nn.Embedding(n, width) for n in vocab) if vocab else None
        self.constant = nn.Parameter(torch.zeros(width)) if dim is None and not vocab else None
        if self.constant is not None:
            nn.init.normal_(self.constant, std=0.1)

    def forward(self, t: torch.Tensor | None, rows: int) -> torch.Tensor:
        if self.linear is not None:
            return self.linear(t)
        if self.embeddings is not None:
            return sum(emb(t[:, i]) for i, emb in enumerate(self.embeddings))
        return self.constant.expand(rows, -1)


def _conv(o: GraphOptions) -> nn.Module:
    from torch_geometric import nn as gnn

    w = o.width
    if o.encoder == "gin":
        mlp = nn.Sequential(nn.Linear(w, 2 * w), norm_layer(o.norm, 2 * w), nn.ReLU(), nn.Linear(2 * w, w))
        return gnn.GINEConv(mlp, train_eps=True) if o.has_edge_features() else gnn.GINConv(mlp, train_eps=True)
    if o.encoder == "gcn":
        return gnn.GCNConv(w, w)
    gat = gnn.GATConv if o.encoder == "gat" else gnn.GATv2Conv
    return gat(w, w // o.heads, heads=o.heads, edge_dim=w if o.has_edge_features() else None)


@ADAPTERS.register("graph")
class GraphAdapter(ModalityAdapter):
    Options = GraphOptions

    def __init__(self, options: GraphOptions) -> None:
        super().__init__(options)
        from torch_geometric import nn as gnn

        o = self.options
        self.node_encoder = FeatureEncoder(o.node_dim, o.vocab("node"), o.width)
        self.edge_encoders = (
            nn.ModuleList(  # one per layer, as in GINE / OGB
                FeatureEncoder(o.edge_dim, o.vocab("edge"), o.width) for _ in range(o.layers)
            )
            if o.has_edge_features()
            else None
        )
        self.convs = nn.ModuleList(_conv(o) for _ in range(o.layers))
        self.norms = nn.ModuleList(norm_layer(o.norm, o.width) for _ in range(o.layers))
        self.dropout = nn.Dropout(o.dropout)
        self.feature_dim = o.width * (o.layers + 1 if o.jk == "cat" else 1)
        self.pool = None
        if o.pooling == "attention":
            self.pool = gnn.AttentionalAggregation(
                nn.Sequential(nn.Linear(self.feature_dim, self.feature_dim), nn.ReLU(), nn.Linear(self.feature_dim, 1))
            )

    @classmethod
    def fit(cls, options: GraphOptions | dict, values: list[Any]) -> dict[str, Any]:
        """``node_vocab`` / ``edge_vocab: fit``: 1 + the largest category of each integer feature
        column over the training graphs (a graph stored once and referenced by many rows is read
        once). A category first seen at evaluation is then out of range and named by the error;
        give the counts by hand where the training split does not cover every category."""
        o = options if isinstance(options, GraphOptions) else GraphOptions.model_validate(options)
        kinds = [k for k in ("node", "edge") if getattr(o, f"{k}_vocab") == "fit"]
        if not kinds:
            return {}
        top: dict[str, torch.Tensor | None] = {k: None for k in kinds}
        stores: set[str] = set()  # a stored graph is one graph, however many rows point into it
        for i, raw in enumerate(values):
            if is_store_ref(raw):
                if str(raw["store"]) in stores:
                    continue
                stores.add(str(raw["store"]))
            try:
                g = to_graph(raw, node_attrs=o.node_attrs, edge_attrs=o.edge_attrs)
            except (SampleError, ValueError, TypeError, OSError) as err:
                raise ValueError(f"graph fit ({'/'.join(kinds)}_vocab: fit), training row {i}: {err}") from err
            for kind in kinds:
                t = getattr(g, "x" if kind == "node" else "edge_attr", None)
                if t is None or t.numel() == 0:
                    continue
                if t.dim() != 2 or (t.is_floating_point() and not torch.equal(t, t.round())) or (t < 0).any():
                    raise ValueError(
                        f"graph fit, training row {i}: {kind} features must be non-negative "
                        f"integer categories [rows, columns] for {kind}_vocab: fit"
                    )
                m = t.long().amax(0)
                top[kind] = m if top[kind] is None else torch.maximum(top[kind], m)
        missing = [k for k in kinds if top[k] is None]
        if missing:
            raise ValueError(f"graph fit: no training graph has {missing[0]} features for {missing[0]}_vocab: fit")
        return {f"{k}_vocab": (top[k] + 1).tolist() for k in kinds}

    def preprocessor(self) -> GraphPreprocessor:
        return GraphPreprocessor(self.options)

    def set_grad_checkpointing(self, enable: bool = True) -> list[str]:
        """Each message-passing layer recomputed in the backward pass."""
        for conv in self.convs:
            checkpoint_module_(conv, enable)
        return [f"convs.{i}" for i in range(len(self.convs))]

    def node_features(self, batch) -> torch.Tensor:
        """One feature vector per node of the batch's union graph: [num_nodes, feature_dim]."""
        ei = batch.edge_index
        h = self.node_encoder(getattr(batch, "x", None), batch.num_nodes)
        outs = [h]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if self.edge_encoders is not None:
                e = self.edge_encoders[i](batch.edge_attr, ei.shape[1])
                z = conv(h, ei, e)
            else:
                z = conv(h, ei)
            h = h + self.dropout(torch.relu(norm(z)))
            outs.append(h)
        return torch.cat(outs, dim=-1) if self.options.jk == "cat" else h

    def forward(self, batch) -> torch.Tensor:
        from torch_geometric import nn as gnn

        h = self.node_features(batch)
        graph = getattr(batch, "batch", None)
        if graph is None:  # a single Data, not a Batch
            graph = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        size = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
        p = self.options.pooling
        if p == "center":
            ptr = getattr(batch, "ptr", None)
            offsets = ptr[:-1] if ptr is not None else torch.zeros(1, dtype=torch.long, device=h.device)
            return h[offsets + batch.center.reshape(-1)]
        if p == "attention":
            return self.pool(h, graph, dim_size=size)
        fn = {"mean": gnn.global_mean_pool, "sum": gnn.global_add_pool, "max": gnn.global_max_pool}[p]
        return fn(h, graph, size)
