"""Evaluate a model on a config's ``eval`` section: zero-shot classification and retrieval."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device as to_device  # tensors, dicts, BatchEncodings

from align.config.schema import EvalConfig
from align.data.labels import class_names, zeroshot_classes
from align.data.splits import per_class_draw
from align.data.tables import Collator, PairedDataset, describe_spec, load_table
from align.errors import ConfigError
from align.eval.retrieval import ranked_retrieval_metrics, retrieval_metrics
from align.eval.zeroshot import build_classifier, classify
from align.eval.zeroshot_metrics import zeroshot_classification_metrics
from align.index.embedding_index import EmbeddingIndex
from align.model.encode import encode


@torch.no_grad()
def encode_table(
    model,
    table,
    columns: dict[str, str],
    label_column: str | None,
    batch_size: int,
    name: str = "data.eval",
    accelerator=None,
    on_error: str = "raise",
) -> tuple[dict[str, torch.Tensor], np.ndarray | None, np.ndarray]:
    """Embeddings for every modality column of a table (eval preprocessing), labels, and the rows
    they belong to (rows that failed to load are left out when ``on_error="skip"``). With an
    ``accelerator``, each process encodes its contiguous share of rows and all get the whole."""
    pre = {m: p for m, p in model.preprocessors().items() if m in columns}
    ds = PairedDataset(table, columns, pre, train=False, label_column=label_column, name=name, on_error=on_error)
    device = next(model.parameters()).device
    model.eval()

    def encode_rows(rows: list[int]):
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, rows), batch_size=batch_size, shuffle=False, collate_fn=Collator(pre)
        )
        out: dict[str, list[torch.Tensor]] = {m: [torch.empty(0)] for m in columns}
        labels = [torch.empty(0, dtype=torch.long)]
        kept = [torch.empty(0, dtype=torch.long)]
        for batch in loader:
            kept.append(batch["index"])
            if not len(batch["index"]):
                continue
            for m in columns:
                out[m].append(model.encode(m, to_device(batch[m], device)).float().cpu())
            if "label" in batch:
                labels.append(batch["label"])
        return (
            {m: torch.cat(v) for m, v in out.items()},
            (torch.cat(labels) if label_column else None),
            torch.cat(kept),
        )

    parts = sharded(list(range(len(ds))), encode_rows, accelerator)
    embs = {m: torch.cat([p[0][m] for p in parts]) for m in columns}
    labels = torch.cat([p[1] for p in parts]).numpy() if label_column else None
    return embs, labels, torch.cat([p[2] for p in parts]).numpy()


def sharded(items: list, fn, accelerator=None) -> list:
    """``[fn(items)]`` in one process; with several, each runs ``fn`` on its contiguous share and
    every process receives all results in order (so metrics agree everywhere)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [fn(items)]
    from accelerate.utils import gather_object

    with accelerator.split_between_processes(items) as mine:
        part = fn(list(mine))
    return gather_object([part])


def encode_items(model, modality: str, items: list, batch_size: int, accelerator=None) -> torch.Tensor:
    parts = sharded(items, lambda chunk: encode(model, modality, chunk, batch_size), accelerator)
    return torch.cat([p for p in parts if p.numel()])


def dedupe_items(items: list, pairs: tuple[np.ndarray, np.ndarray]) -> tuple[list, np.ndarray, tuple]:
    """Identical items (the same templated caption on many rows) become one gallery item whose
    positives are the union of their rows' positives. Returns the distinct items, the index of each
    original item's distinct item, and the pairs re-pointed and de-duplicated."""
    first: dict = {}
    try:
        inverse = np.asarray([first.setdefault(it, len(first)) for it in items], dtype=np.int64)
    except TypeError:  # unhashable items (arrays, dicts): nothing to merge
        return items, np.arange(len(items)), pairs
    unique = list(first)
    a, b = pairs
    merged = np.unique(np.stack([a, inverse[b]], 1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
    return unique, inverse, (merged[:, 0], merged[:, 1])


def expand_rows(table, column: str) -> tuple[list[Any], np.ndarray]:
    """Every item of a list-valued column becomes its own row (CLIP_benchmark: every caption is a
    query); returns the items and each item's source row."""
    items, source = [], []
    for i, value in enumerate(table[column]):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            items.append(v)
            source.append(i)
    return items, np.asarray(source, dtype=np.int64)


def index_retrieval(
    a_emb: torch.Tensor,
    b_emb: torch.Tensor,
    pairs: tuple[np.ndarray, np.ndarray],
    ks,
    names: tuple[str, str],
    spec: str = "Flat",
) -> dict[str, Any]:
    """R@k in both directions through a FAISS index of each gallery (``spec``: Flat = exact; an
    ANN spec shows what approximate search costs in recall)."""
    a_idx, b_idx = pairs
    out: dict[str, Any] = {"spec": spec}
    for q, g, qi, gi, prefix in (
        (a_emb, b_emb, a_idx, b_idx, f"{names[0]}_to_{names[1]}"),
        (b_emb, a_emb, b_idx, a_idx, f"{names[1]}_to_{names[0]}"),
    ):
        index = EmbeddingIndex(g.shape[1], spec)
        index.add(g)
        _, ids = index.search(q, max(ks))
        got, _ = ranked_retrieval_metrics(ids, np.stack([qi, gi], 1), len(g), ks=ks, prefix=prefix, n_queries=len(q))
        out.update({k: v for k, v in got.items() if "/R@" in k})
    return out


def adapted_scores(model, path: str, query: str, names: list[str], x: torch.Tensor) -> torch.Tensor:
    """Logits of a saved few-shot head (``eval.zeroshot.adapter``) for the eval classes."""
    from align.model.adapted import PromptHead, load_adapted

    head = load_adapted(path, getattr(model, "module", model))
    if head.query != query:
        raise ConfigError(f"config key 'eval.zeroshot.adapter': {path} classifies '{head.query}', not '{query}'")
    if isinstance(head, PromptHead) and not head.class_specific:
        return head.logits(x, names=names)  # shared context: any class names
    if head.classnames != list(names):
        raise ConfigError(
            f"config key 'eval.zeroshot.adapter': {path} was fitted on classes {head.classnames}, the eval data "
            f"has {list(names)}"
        )
    return head.logits(x)


def probe_metrics(model, ecfg: EvalConfig, embs: dict, labels: np.ndarray, table, accelerator=None) -> dict[str, Any]:
    """``eval.probe``: logistic regression fitted on ``eval.probe.data`` (every row, or ``shots`` seeded
    rows per class), scored on the eval rows (``align.eval.linear_probe``)."""
    pr = ecfg.probe
    spec = pr.data
    if spec is None:
        raise ConfigError("config key 'eval.probe.data': no rows to fit the probe on")
    if not spec.label_column:
        raise ConfigError("config key 'eval.probe.data.label_column': the probe is fitted on labelled rows")
    fit = load_table(spec, "eval.probe.data")
    names = class_names(table, ecfg.data.label_column)
    fit_names = class_names(fit, spec.label_column)
    if names is not None and fit_names is not None and names != fit_names:
        raise ConfigError(
            f"config key 'eval.probe.data.label_column': its classes {fit_names} are not the eval data's {names}"
        )
    fit_labels = np.asarray(fit[spec.label_column], dtype=np.int64)
    if pr.shots is not None:
        classes = np.unique(fit_labels)
        counts = {int(c): int((fit_labels == c).sum()) for c in classes}
        short = next((c for c, n in counts.items() if n < pr.shots), None)
        if short is not None:
            name = names[short] if names else short
            raise ConfigError(
                f"config key 'eval.probe.shots': {pr.shots} rows per class asked, class {name!r} has {counts[short]}"
            )
        fit = fit.select(per_class_draw(fit_labels, classes, pr.shots, pr.seed).tolist())
    fit_emb, fit_y, _ = encode_table(
        model, fit, {pr.query: spec.columns[pr.query]}, spec.label_column, ecfg.batch_size,
        name=f"eval.probe.data ({spec.source})", accelerator=accelerator, on_error=spec.on_error,
    )  # fmt: skip
    n_classes = len(names) if names else int(max(fit_y.max(), labels.max()) + 1)
    from align.eval.linear_probe import linear_probe_metrics

    out = linear_probe_metrics(
        fit_emb[pr.query].numpy(), fit_y, embs[pr.query].numpy(), labels,
        classnames=names or [str(i) for i in range(n_classes)], seed=pr.seed, folds=pr.folds,
    )  # fmt: skip
    out.update(query=pr.query, fit_data=describe_spec(spec, fit))
    return out


def evaluate(model, ecfg: EvalConfig, accelerator=None, keep: dict | None = None) -> dict[str, Any]:
    """Run the configured evaluations. Under Accelerate pass the accelerator: every process must
    call this; encoding is shared and every process returns the same metrics. A ``keep`` dict
    receives the table, embeddings and caption rows (for plots of query results)."""
    core = getattr(model, "module", model)
    if ecfg.dim is not None and ecfg.dim > core.cfg.embed_dim:
        raise ConfigError(f"config key 'eval.dim': {ecfg.dim} is more than the model's embed_dim {core.cfg.embed_dim}")
    previous, core.output_dim = core.output_dim, ecfg.dim
    try:
        return _evaluate(model, ecfg, accelerator, keep)
    finally:
        core.output_dim = previous


def _evaluate(model, ecfg: EvalConfig, accelerator=None, keep: dict | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec = ecfg.data
    table = load_table(spec, "eval.data")
    prompt_names = None
    if ecfg.zeroshot is not None:  # check the classes before encoding everything
        if not spec.label_column:
            raise ConfigError("config key 'eval.data.label_column': zero-shot evaluation needs labels")
        prompt_names = zeroshot_classes(
            ecfg.zeroshot.classnames, class_names(table, spec.label_column), np.asarray(table[spec.label_column])
        )
    if ecfg.probe is not None and not spec.label_column:
        raise ConfigError("config key 'eval.data.label_column': the linear probe is scored on labelled rows")
    embs, labels, kept = encode_table(
        model,
        table,
        spec.columns,
        spec.label_column,
        ecfg.batch_size,
        name=f"eval.data ({spec.source})",
        accelerator=accelerator,
        on_error=spec.on_error,
    )
    metrics: dict[str, Any] = {"dataset": describe_spec(spec, table)}
    if len(kept) < len(table):  # on_error: skip left rows out: say how many, evaluate the rest
        metrics["dataset"].update(
            skipped=len(table) - len(kept),
            evaluated=len(kept),
            skipped_rows=sorted(set(range(len(table))) - set(kept.tolist()))[:100],
        )
        table = table.select(kept)
    if ecfg.zeroshot is not None:
        zs = ecfg.zeroshot
        templates = zs.templates
        if isinstance(templates, dict) and isinstance(zs.classnames, dict):  # CuPL prompts keyed by data name
            templates = {zs.classnames.get(c, c): t for c, t in templates.items()}
        if zs.adapter is not None:
            scores = adapted_scores(model, zs.adapter, zs.query, prompt_names, embs[zs.query])
        else:
            classifier = build_classifier(model, prompt_names, templates, zs.prompt_modality)
            scores = classify(embs[zs.query], classifier)
        metrics["zeroshot"] = zeroshot_classification_metrics(scores, labels, classnames=prompt_names)
        if zs.adapter is not None:
            metrics["zeroshot"]["adapter"] = zs.adapter
    if ecfg.probe is not None:
        metrics["probe"] = probe_metrics(model, ecfg, embs, labels, table, accelerator)
    if ecfg.retrieval is not None:
        r = ecfg.retrieval
        if r.positives == "label" and labels is None:
            raise ConfigError("config key 'eval.retrieval.positives': 'label' needs eval.data.label_column")
        # b may hold several items per row (e.g. 5 captions per image): each is its own row
        items, source = expand_rows(table, spec.columns[r.b])
        if r.positives == "label":
            pairs = np.nonzero(labels[:, None] == labels[source][None, :])
        else:  # each b row's own a row
            pairs = (source, np.arange(len(source)))
        n_items = len(items)
        if r.dedupe:
            items, inverse, pairs = dedupe_items(items, pairs)
            source = source[np.unique(inverse, return_index=True)[1]]  # each distinct item's first row
        b_emb = encode_items(model, r.b, items, ecfg.batch_size, accelerator)
        metrics["retrieval"] = {
            "a": r.a,
            "b": r.b,
            "positives": r.positives,
            "n_a": len(embs[r.a]),
            "n_b": len(b_emb),
            "n_b_items": n_items,
            "deduplicated": bool(r.dedupe),
            **retrieval_metrics(embs[r.a], b_emb, np.stack(pairs, 1), ks=r.ks, names=(r.a, r.b)),
            "faiss": index_retrieval(embs[r.a], b_emb, pairs, r.ks, (r.a, r.b), r.index),
        }
    if keep is not None:
        keep.update(table=table, embeddings=embs, labels=labels)
        if ecfg.retrieval is not None:
            keep.update(b_items=items, b_embeddings=b_emb, b_source=source)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
