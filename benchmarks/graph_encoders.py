"""Training samples/s of the graph encoders (GIN, GCN, GAT, GATv2) on real molecules, CPU.

    python benchmarks/graph_encoders.py                      # batch 64, width 128, 4 layers, 5 repeats
    python benchmarks/graph_encoders.py --width 256 --layers 5 --batch-size 64 --repeats 5
    python benchmarks/graph_encoders.py --smoke              # 64 molecules, width 16, 2 steps: seconds (CI)

Molecules: ChEBI-20 validation SMILES (../shared/data/graph/chebi20; median ~25 heavy atoms),
parsed once with from_smiles and batched with PyG (no padding). A step is what the trainer does
for the graph side: adapter -> linear head -> L2 norm -> CLIP loss against a batch of fixed unit
text embeddings -> backward -> AdamW step. Also: preprocessing samples/s (SMILES -> checked Data ->
Batch, as in a DataLoader worker). Medians over repeats of ``--steps`` steps each.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from align.modalities import build_adapter

CHEBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "graph" / "chebi20" / "validation.txt"
SMOKE = {"molecules": 64, "batch_size": 16, "width": 16, "layers": 2, "steps": 2, "repeats": 1}  # --smoke defaults


def smiles(n: int) -> list[str]:
    with open(CHEBI, newline="") as f:
        return [r["SMILES"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:n]


def options(encoder: str, width: int, layers: int) -> dict:
    opts = {"encoder": encoder, "width": width, "layers": layers, "node_vocab": "smiles", "pooling": "mean"}
    if encoder != "gcn":  # GCN has no edge features
        opts["edge_vocab"] = "smiles"
    return opts


def preprocess_rate(mols: list[str], batch_size: int) -> float:
    pre = build_adapter("graph", options("gin", 8, 1)).preprocessor()
    t0 = time.perf_counter()
    for s in range(0, len(mols) - batch_size + 1, batch_size):
        pre.collate([pre(m, train=True) for m in mols[s : s + batch_size]])
    return (len(mols) // batch_size) * batch_size / (time.perf_counter() - t0)


def train_rate(encoder: str, batches: list, width: int, layers: int, steps: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    adapter = build_adapter("graph", options(encoder, width, layers))
    head = torch.nn.Linear(adapter.feature_dim, 128, bias=False)
    params = list(adapter.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    b = batches[0].num_graphs
    targets = F.normalize(torch.randn(b, 128), dim=-1)
    labels = torch.arange(b)
    rates = []
    for r in range(repeats + 1):  # the first repeat warms up
        t0 = time.perf_counter()
        for i in range(steps):
            emb = F.normalize(head(adapter(batches[(r * steps + i) % len(batches)])), dim=-1)
            logits = 14.3 * emb @ targets.T
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if r:
            rates.append(steps * b / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--molecules", type=int, default=2048, help="ChEBI-20 validation molecules used")
    ap.add_argument("--smoke", action="store_true", help=f"tiny run of every encoder (CI): {SMOKE}")
    args = ap.parse_args()
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args()

    mols = smiles(args.molecules)
    pre = build_adapter("graph", options("gin", 8, 1)).preprocessor()
    data = [pre(m, train=True) for m in mols]
    bs = args.batch_size
    batches = [pre.collate(data[s : s + bs]) for s in range(0, len(data) - bs + 1, bs)]
    nodes = statistics.median(d.num_nodes for d in data)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(data)} ChEBI-20 molecules "
        f"(median {nodes:.0f} atoms), batch {bs}, width {args.width}, {args.layers} layers"
    )
    print(f"preprocessing (SMILES -> Data -> Batch), 1 process: {preprocess_rate(mols, bs):,.0f} molecules/s")
    print(f"\n| encoder | training samples/s (median of {args.repeats}) | min | max |\n|---|---:|---:|---:|")
    for enc in ("gin", "gcn", "gat", "gatv2"):
        rates = train_rate(enc, batches, args.width, args.layers, args.steps, args.repeats)
        print(f"| {enc} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |")


if __name__ == "__main__":
    main()
