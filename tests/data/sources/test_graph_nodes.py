"""Node-level alignment on one big graph (CiteSeer): the ``graph-nodes`` source stores the graph
once as .npy files and gives one small row per node; the graph preprocessor cuts each node's
k-hop neighbourhood on the fly. Checked against PyG's own reader and ``k_hop_subgraph`` on the
whole graph, the ``tables`` format against the same graph, errors, and a short training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from align.config.dataset import DatasetSpec
from align.data.tables import load_table
from align.errors import DataError, SampleError
from align.modalities import build_adapter

CITESEER = Path(__file__).resolve().parents[4] / "shared" / "data" / "graph" / "citeseer"
pytestmark = pytest.mark.skipif(
    not (CITESEER / "raw" / "ind.citeseer.graph").is_file(), reason="shared CiteSeer data missing"
)
FIELDS = ["Agents", "AI", "DB", "IR", "ML", "HCI"]
EGO = {"node_dim": 3703, "pooling": "center", "ego_hops": 2, "norm": "none"}


def spec(split: str, cache: Path, **kw) -> DatasetSpec:
    return DatasetSpec(
        source="graph-nodes",
        data_dir=str(CITESEER),
        split=split,
        columns={"graph": "graph"},
        label_column="label",
        load_kwargs={"name": "citeseer", "cache_dir": str(cache)},
        **kw,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nodes-cache")


@pytest.fixture(scope="module")
def tables(cache) -> dict:
    return {s: load_table(spec(s, cache)) for s in ("train", "val", "test", "all")}


@pytest.fixture(scope="module")
def whole():
    """The reference: PyG's reader on the raw files, independent of the store."""
    from torch_geometric.io import read_planetoid_data

    import align.modalities.graph_io  # noqa: F401

    return read_planetoid_data(str(CITESEER / "raw"), "citeseer")


def embed(adapter, raws) -> torch.Tensor:
    pre = adapter.preprocessor()
    adapter.eval()
    with torch.no_grad():
        return adapter(pre.collate([pre(r, train=False) for r in raws]))


def test_citeseer_counts_splits_and_rows_hold_no_graph(tables, whole, cache):
    from align.modalities.graph_io import load_store

    assert {s: len(t) for s, t in tables.items()} == {"train": 120, "val": 500, "test": 1000, "all": 3327}
    for split, mask in (("train", whole.train_mask), ("val", whole.val_mask), ("test", whole.test_mask)):
        t = tables[split]
        assert t.features["label"].names == FIELDS
        nodes = np.asarray(t["node"])
        assert nodes.tolist() == torch.nonzero(mask).flatten().tolist()
        assert np.asarray(t["label"]).tolist() == whole.y[mask].tolist()
        assert set(t["split"]) == {split}
    assert np.bincount(tables["train"]["label"]).tolist() == [20] * 6
    every = tables["all"]
    assert every["node"] == list(range(3327))
    unlabeled = [n for n, s in zip(every["node"], every["split"]) if s == "unlabeled"]
    assert len(unlabeled) == 15 and all(every[n]["label"] == -1 for n in unlabeled)
    assert float(whole.x[unlabeled].abs().sum()) == 0  # PyG's zero padding, not real papers
    # a row is a reference, not a graph: a few dozen bytes, and one shared store
    for t in tables.values():
        assert t.data.nbytes / len(t) < 200, t.data.nbytes
        assert all(set(g) == {"store", "center"} and g["center"] == n for g, n in zip(t["graph"], t["node"]))
    stores = {g["store"] for t in tables.values() for g in t["graph"]}
    assert len(stores) == 1 and Path(next(iter(stores))).parent == cache
    g = load_store(next(iter(stores)))
    assert g.num_nodes == 3327 and list(g.edge_index.shape) == [2, 9104] and list(g.x.shape) == [3327, 3703]
    assert torch.equal(g.edge_index, whole.edge_index) and torch.equal(g.x, whole.x)
    assert not (CITESEER / "processed").exists()  # the shared folder is only read


def test_cache_is_plain_npy_loadable_without_pickle(tables, cache):
    stores = [p for p in cache.iterdir()]
    assert len(stores) == 1 and stores[0].is_dir()  # no temp folders left behind
    files = sorted(p.name for p in stores[0].iterdir())
    assert files and all(f.endswith(".npy") for f in files), files
    for f in files:
        arr = np.load(stores[0] / f, allow_pickle=False)
        assert arr.dtype != object
    before = {f: (stores[0] / f).stat().st_mtime_ns for f in files}
    assert load_table(spec("test", cache))[0]["graph"]["store"] == str(stores[0])  # reused, not rewritten
    assert {f: (stores[0] / f).stat().st_mtime_ns for f in files} == before


def test_ego_nets_and_gin_embeddings_equal_the_whole_graph(tables, whole):
    from torch_geometric.data import Batch
    from torch_geometric.utils import degree, k_hop_subgraph

    from align.modalities.graph_io import load_store, to_graph

    test = tables["test"]
    deg = degree(whole.edge_index[1], whole.num_nodes)
    hub = int(torch.argmax(deg * whole.test_mask))
    rows = [test[i]["graph"] for i in (0, 1, 500, 999)] + [{**test[0]["graph"], "center": hub}]
    pre = build_adapter("graph", {**EGO, "width": 16, "layers": 2}).preprocessor()
    for ref in rows:
        c = ref["center"]
        sample = pre(ref, train=False)
        subset, ei, mapping, _ = k_hop_subgraph(c, 2, whole.edge_index, relabel_nodes=True, num_nodes=whole.num_nodes)
        assert sample.num_nodes == len(subset) < whole.num_nodes
        assert int(sample.center) == int(mapping)
        torch.testing.assert_close(sample.x, whole.x[subset])
        assert sorted(map(tuple, sample.edge_index.T.tolist())) == sorted(map(tuple, ei.T.tolist()))
    assert pre(rows[-1], train=False).num_nodes > 50  # the hub's neighbourhood is a real test
    # the stored graph is shared by every sample, not cloned
    assert to_graph(rows[0]).x.data_ptr() == load_store(rows[0]["store"]).x.data_ptr()

    for layers in (1, 2, 3):
        torch.manual_seed(layers)
        full = build_adapter("graph", {"node_dim": 3703, "norm": "batch", "width": 16, "layers": layers})
        ego = build_adapter("graph", {**EGO, "norm": "batch", "width": 16, "layers": layers})
        ego.load_state_dict(full.state_dict())
        full.eval()
        with torch.no_grad():
            nodes = full.node_features(Batch.from_data_list([whole]))[[r["center"] for r in rows]]
        close = torch.allclose(embed(ego, rows), nodes, rtol=1e-4, atol=1e-5)
        assert close == (layers <= 2), layers  # exact up to the cut, and the cut is real beyond it


def test_store_without_ego_hops_is_a_clear_error(tables):
    ref = tables["train"][0]["graph"]
    no_ego = build_adapter("graph", {"node_dim": 3703, "pooling": "center", "width": 8, "layers": 1})
    with pytest.raises(SampleError, match=r"stored graph of 3327 nodes.*ego_hops"):
        no_ego.preprocessor()(ref, train=False)
    pre = build_adapter("graph", {**EGO, "width": 8, "layers": 1}).preprocessor()
    with pytest.raises(SampleError, match="center node 5000 is outside the graph's 3327 nodes"):
        pre({**ref, "center": 5000}, train=False)


def test_tables_format_with_string_ids_gives_the_same_subgraphs(tmp_path, whole):
    import pandas as pd
    from torch_geometric.utils import k_hop_subgraph, subgraph

    from align.modalities.graph_io import load_store

    # a few hundred nodes around a busy paper (reference node i = keep[i]), listed in a shuffled
    # order with string ids, each edge given in one direction only
    busiest = int(torch.argmax(torch.bincount(whole.edge_index[1], minlength=whole.num_nodes)))
    keep = k_hop_subgraph(busiest, 3, whole.edge_index, num_nodes=whole.num_nodes)[0][:300]
    ei, _ = subgraph(keep, whole.edge_index, relabel_nodes=True, num_nodes=whole.num_nodes)
    x, y, n = whole.x[keep], whole.y[keep], len(keep)
    order = np.random.default_rng(0).permutation(n)  # table row k is reference node order[k]
    ids = [f"paper-{int(k)}" for k in keep]
    pd.DataFrame(
        {
            "node": [ids[i] for i in order],
            "x": [x[i].tolist() for i in order],
            "label": [int(y[i]) for i in order],
            "split": ["test" if k % 3 == 0 else "train" for k in range(n)],
        }
    ).to_parquet(tmp_path / "nodes.parquet")
    one_way = ei[:, ei[0] < ei[1]]
    pd.DataFrame({"src": [ids[i] for i in one_way[0]], "dst": [ids[i] for i in one_way[1]]}).to_csv(
        tmp_path / "edges.csv", index=False
    )
    kwargs = {
        "format": "tables",
        "nodes": str(tmp_path / "nodes.parquet"),
        "edges": str(tmp_path / "edges.csv"),
        "features": "x",
        "source": "src",
        "target": "dst",
        "cache_dir": str(tmp_path / "cache"),
    }
    table = load_table(
        DatasetSpec(
            source="graph-nodes", split="test", columns={"graph": "graph"}, label_column="label", load_kwargs=kwargs
        )
    )
    assert len(table) == 100 and set(table["split"]) == {"test"} and "x" not in table.column_names
    assert table.column_names == ["node", "graph", "node_id", "label", "split"]
    assert [ids[order[k]] for k in table["node"]] == table["node_id"]  # numbered in table order
    store = load_store(table[0]["graph"]["store"])
    assert store.num_nodes == n and torch.equal(store.x, x[order])
    pairs = {tuple(p) for p in order[store.edge_index.numpy()].T.tolist()}
    assert store.edge_index.shape[1] == len(pairs) == ei.shape[1] and pairs == {tuple(p) for p in ei.T.tolist()}
    inverse = np.argsort(order)  # reference node -> table row
    pre = build_adapter("graph", {**EGO, "width": 8, "layers": 1}).preprocessor()
    for row in table.select(range(0, 100, 9)):
        ref_c = int(order[row["node"]])
        ref_subset, ref_ei, _, _ = k_hop_subgraph(ref_c, 2, ei, relabel_nodes=True, num_nodes=n)
        sample = pre(row["graph"], train=False)
        ours = order[np.sort(inverse[ref_subset.numpy()])]  # sample node j as a reference node
        assert sample.num_nodes == len(ref_subset) and int(ours[int(sample.center)]) == ref_c
        torch.testing.assert_close(sample.x, x[ours])
        assert {(int(ours[a]), int(ours[b])) for a, b in sample.edge_index.T.tolist()} == {
            (int(ref_subset[a]), int(ref_subset[b])) for a, b in ref_ei.T.tolist()
        }


def test_unknown_node_in_edge_table_is_a_data_error_naming_it(tmp_path):
    (tmp_path / "nodes.csv").write_text("node,text\na,first\nb,second\nc,third\n")
    (tmp_path / "edges.csv").write_text("source,target\na,b\nb,c\nc,zzz\n")
    s = DatasetSpec(
        source="graph-nodes",
        split="all",
        columns={"graph": "graph"},
        load_kwargs={
            "format": "tables",
            "nodes": str(tmp_path / "nodes.csv"),
            "edges": str(tmp_path / "edges.csv"),
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    with pytest.raises(DataError, match=r"config key 'data.train.*edges\.csv row 2: target 'zzz'.*nodes\.csv"):
        load_table(s)
    assert not any((tmp_path / "cache").glob("*"))  # nothing half-written
    with pytest.raises(DataError, match=r"unknown load_kwargs \['nodez'\]"):
        load_table(s.model_copy(update={"load_kwargs": {**s.load_kwargs, "nodez": 1}}))


def test_short_training_beats_chance_on_the_test_nodes(tmp_path, cache, capsys):
    """120 labelled nodes, a few dozen steps of a small GCN + text tower: zero-shot from field
    names on the 1,000 test nodes clearly beats chance (1/6); the LR baseline runs on the same data."""
    import yaml

    from align.app.cli import main
    from align.config.schema import load_config
    from align.eval.baselines import node_feature_logreg

    cfg = yaml.safe_load((Path(__file__).resolve().parents[3] / "configs" / "citeseer-node-text.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["model"].update(embed_dim=32)
    cfg["model"]["modalities"]["graph"]["options"]["width"] = 32
    cfg["model"]["modalities"]["text"]["options"] = {
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        "output_dim": 32,
    }
    for s in (cfg["data"]["train"], cfg["eval"]["data"]):
        s.update(data_dir=str(CITESEER), load_kwargs={**s["load_kwargs"], "cache_dir": str(cache)})
    cfg["train"].update(steps=80, warmup_steps=10, progress=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    assert main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "zeroshot.json").read_text())
    top1 = report["metrics"]["top1"]
    loaded = load_config(tmp_path / "cfg.yaml")
    lr = node_feature_logreg(loaded.data.train, loaded.eval.data)
    with capsys.disabled():
        print(
            f"\nCiteSeer node<->text (80 steps, width 32): zero-shot top-1 {top1:.3f} on 1000 test nodes; "
            f"LR on raw features {lr['accuracy']:.3f}"
        )
    assert top1 >= 0.40, report["metrics"]
    assert lr["n_train"] == 120 and lr["n_test"] == 1000 and lr["accuracy"] > 0.4
