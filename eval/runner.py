"""Evaluate a model on a config's ``eval`` section: zero-shot classification and retrieval."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from align.config import EvalConfig
from align.data import Collator, PairedDataset, load_table
from align.zeroshot import build_classifier, classify, to_device
from eval.metrics import balanced_accuracy, confusion_matrix, recall_at_k, topk_accuracy


@torch.no_grad()
def encode_table(model, table, columns: dict[str, str], label_column: str | None, batch_size: int,
                 name: str = "data.eval") -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
    """Embeddings for every modality column of a table (eval preprocessing), plus labels."""
    pre = {m: p for m, p in model.preprocessors().items() if m in columns}
    ds = PairedDataset(table, columns, pre, train=False, label_column=label_column, name=name)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=Collator(pre))
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {m: [] for m in columns}
    labels = []
    model.eval()
    for batch in loader:
        for m in columns:
            out[m].append(model.encode(m, to_device(batch[m], device)).float().cpu())
        if "label" in batch:
            labels.append(batch["label"])
    return {m: torch.cat(v) for m, v in out.items()}, (torch.cat(labels).numpy() if labels else None)


def zeroshot_metrics(model, query_emb: torch.Tensor, labels: np.ndarray, classnames, templates,
                     prompt_modality: str) -> dict[str, Any]:
    classifier = build_classifier(model, classnames, templates, prompt_modality)
    scores = classify(query_emb, classifier.float().cpu()).numpy()
    pred = scores.argmax(1)
    cm = confusion_matrix(pred, labels, len(classnames))
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5),
            "balanced_accuracy": balanced_accuracy(cm), "n": int(len(labels)),
            "confusion_matrix": cm.tolist(), "classnames": list(classnames)}


def retrieval_metrics(a: torch.Tensor, b: torch.Tensor, labels: np.ndarray | None, ks) -> dict[str, Any]:
    """Both directions through an exact FAISS index. With labels, a gallery item is a positive when
    it has the query's label (class-level recall); without, row i matches row i only."""
    from align.index import EmbeddingIndex

    def one_way(q: torch.Tensor, g: torch.Tensor) -> dict[int, float]:
        index = EmbeddingIndex(g.shape[1])
        index.add(g)
        _, ids = index.search(q, max(ks))
        if labels is not None:
            positives = labels[:, None] == labels[None, :]
        else:
            positives = np.eye(len(q), dtype=bool)
        return recall_at_k(ids, positives, ks)

    ab, ba = one_way(a, b), one_way(b, a)
    return {"positives": "same label" if labels is not None else "same row",
            "a_to_b": {f"R@{k}": v for k, v in ab.items()}, "b_to_a": {f"R@{k}": v for k, v in ba.items()}}


def evaluate(model, ecfg: EvalConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec = ecfg.data
    table = load_table(spec, "eval.data")
    embs, labels = encode_table(model, table, spec.columns, spec.label_column, ecfg.batch_size,
                                name=f"eval.data ({spec.source})")
    metrics: dict[str, Any] = {"dataset": {"source": spec.source, "split": spec.split, "rows": len(table)}}
    if ecfg.zeroshot is not None:
        zs = ecfg.zeroshot
        if labels is None:
            raise ValueError("config key 'eval.data.label_column': zero-shot evaluation needs labels")
        metrics["zeroshot"] = zeroshot_metrics(model, embs[zs.query], labels, zs.classnames, zs.templates,
                                               zs.prompt_modality)
    if ecfg.retrieval is not None:
        r = ecfg.retrieval
        metrics["retrieval"] = {"a": r.a, "b": r.b, **retrieval_metrics(embs[r.a], embs[r.b], labels, r.ks)}
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
