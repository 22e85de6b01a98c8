"""``align eval pairs``: retrieval between every pair of a checkpoint's modalities, in one report.

Why a command of its own: a model trained on three or more modalities has a retrieval number for
every pair, and ``align eval retrieval`` gives one pair per run, re-encoding everything each time.
Here every modality column is encoded once and every unordered pair (a, b) is scored in both
directions with the same code as ``align eval retrieval eval.retrieval.a=A eval.retrieval.b=B``
(``retrieval_metrics`` and the FAISS ``index_retrieval``; b items expanded and de-duplicated by
the runner's own ``expand_rows`` / ``dedupe_items``), so each pair's numbers are that command's.

Encoding once: a column with one item per row is encoded row by row (``encode_table``, which
honours ``on_error``); its de-duplicated b items are those rows' embeddings. A list-valued column
(several captions per row) is encoded as its distinct items (``encode_items``); its row embedding
(the a side) is that of the row's first item, which is what evaluation preprocessing reads. Each
pair is oriented so that a list-valued column is b (the side ``align eval retrieval`` expands);
the report names a and b so any pair can be rerun alone. The numbers are that command's exactly
when an encoder's output for an item does not depend on its batch-mates (true on CPU here; on a
GPU, batch-size-dependent kernels may move scores in the last float bits). Not the same: a caption
that fails to load raises here, where the one-pair command's ``on_error: skip`` drops its row.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from align.config.schema import RetrievalSpec
from align.data.tables import describe_spec, hf_progress, load_table
from align.errors import ConfigError
from align.eval.commands import EvalError, eval_config
from align.eval.plots import plot_pair_heatmap
from align.eval.report import build_report, write_report
from align.eval.retrieval import retrieval_metrics
from align.eval.runner import dedupe_items, encode_items, encode_table, expand_rows, index_retrieval
from align.io.atomic import write_atomic
from align.model.checkpoint import checkpoint_step, load_model, resolve_checkpoint


class PairsError(EvalError):
    """Fewer than two modalities to pair, or a column that cannot be paired; names the key."""


def pairs_config(ckpt_cfg, config: str | Path | None, overrides: Sequence[str]):
    """The eval section and where its retrieval settings came from: the config's ``retrieval``
    section, or defaults (ks [1, 5, 10]; positives ``label`` when the data has a label column)."""
    # a task that is neither zeroshot nor retrieval: no section is required, zeroshot is dropped
    ecfg = eval_config("pairs", ckpt_cfg, config, overrides)  # type: ignore[arg-type]
    if ecfg.retrieval is not None:
        return ecfg, "config (eval.retrieval)"
    ecfg.retrieval = RetrievalSpec(positives="label" if ecfg.data.label_column else "row")
    return ecfg, "defaults (no eval.retrieval section)"


def _is_list_column(table, column: str) -> bool:
    """Whether a column holds several items per row (a caption list, a list of file paths or HF
    media dicts), judged on its first row. A list of numbers or of lists is one item (a feature
    vector, a point cloud), not several."""
    if not len(table):
        return False
    value = table[0][column]
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and not isinstance(value[0], (int, float, list, tuple, np.ndarray, np.generic))
    )


def encode_once(model, table, ecfg, mods: list[str]) -> dict[str, Any]:
    """Every modality's embeddings from one encoding of its column: ``rows[m]`` (one per kept row,
    the a side) and ``items[m]`` (expanded rows, distinct item embeddings and their inverse)."""
    spec = ecfg.data
    listed = [m for m in mods if _is_list_column(table, spec.columns[m])]
    scalar = [m for m in mods if m not in listed]
    rows: dict[str, torch.Tensor] = {}
    if scalar:
        rows, labels, kept = encode_table(
            model,
            table,
            {m: spec.columns[m] for m in scalar},
            spec.label_column,
            ecfg.batch_size,
            name=f"eval.data ({spec.source})",
            on_error=spec.on_error,
        )
    else:
        labels = np.asarray(table[spec.label_column]) if spec.label_column else None
        kept = np.arange(len(table))
    if len(kept) < len(table):  # on_error: skip left rows out of every modality
        table = table.select(kept)
    items: dict[str, dict[str, Any]] = {}
    for m in mods:
        values, source = expand_rows(table, spec.columns[m])
        distinct, inverse, _ = dedupe_items(values, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        if m in scalar:  # each distinct item's first row holds its embedding
            emb = rows[m][source[np.unique(inverse, return_index=True)[1]]]
        else:
            emb = encode_items(model, m, distinct, ecfg.batch_size)
            present, first = np.unique(source, return_index=True)  # each row's first item
            if len(present) < len(table):
                row = int(np.setdiff1d(np.arange(len(table)), present)[0])
                raise PairsError(
                    f"config key 'eval.data.columns.{m}': row {row} of column '{spec.columns[m]}' has no items"
                )
            rows[m] = emb[torch.from_numpy(inverse[first])]
        items[m] = {"values": values, "source": source, "emb": emb, "inverse": inverse, "list": m in listed}
    return {
        "table": table,
        "labels": labels,
        "kept": kept,
        "rows": rows,
        "items": items,
        "encoded": {
            m: {
                "items": len(items[m]["emb"]) if m in listed else len(rows[m]),
                "level": "distinct items" if m in listed else "rows",
            }
            for m in mods
        },
    }


def pair_metrics(enc: dict[str, Any], a: str, b: str, r) -> dict[str, Any]:
    """One pair as ``evaluate`` scores it for ``eval.retrieval.a=a b=b``, from embeddings at hand."""
    labels, it = enc["labels"], enc["items"][b]
    source = it["source"]
    if r.positives == "label":
        if labels is None:
            raise PairsError("config key 'eval.retrieval.positives': 'label' needs eval.data.label_column")
        pairs = np.nonzero(labels[:, None] == labels[source][None, :])
    else:
        pairs = (source, np.arange(len(source)))
    if r.dedupe:
        _, _, pairs = dedupe_items(it["values"], pairs)  # the runner's merge; gallery = distinct items
        b_emb = it["emb"]  # the distinct items, in dedupe_items' order
    else:  # every expanded item is its own gallery entry
        b_emb = it["emb"][torch.from_numpy(it["inverse"])] if it["list"] else enc["rows"][b][source]
    a_emb = enc["rows"][a]
    full = retrieval_metrics(a_emb, b_emb, np.stack(pairs, 1), ks=r.ks, names=(a, b))
    directions = {}
    for q, g in ((a, b), (b, a)):
        p = f"{q}_to_{g}"
        directions[p] = {
            **{f"R@{k}": full[f"{p}/R@{k}"] for k in r.ks},
            "MRR": full[f"{p}/MRR"],
            "n": full[f"{p}/n_queries"],
        }
    return {
        "a": a,
        "b": b,
        "n_a": len(a_emb),
        "n_b": len(b_emb),
        "n_b_items": len(source),
        "directions": directions,
        "metrics": full,
        "faiss": index_retrieval(a_emb, b_emb, pairs, r.ks, (a, b), r.index),
    }


def orient(mods: list[str], enc: dict[str, Any]) -> list[tuple[str, str]]:
    """Every unordered pair once, in column order, with a list-valued column as b when only one is."""
    out = []
    for x, y in combinations(mods, 2):
        out.append((y, x) if enc["items"][x]["list"] and not enc["items"][y]["list"] else (x, y))
    return out


def r1_table(mods: list[str], result: dict[str, Any]) -> list[list[float | None]]:
    """R@1 as [query][gallery] (None on the diagonal)."""
    r1 = {}
    for p in result["pairs"]:
        for name, d in p["directions"].items():
            q, g = name.split("_to_")
            r1[q, g] = d.get("R@1")
    return [[None if q == g else r1.get((q, g)) for g in mods] for q in mods]


def markdown_table(mods: list[str], matrix: list[list[float | None]], note: str) -> str:
    head = "| query \\ gallery | " + " | ".join(mods) + " |"
    rule = "|---|" + "---:|" * len(mods)
    body = [
        "| " + q + " | " + " | ".join("—" if v is None else f"{v:.4f}" for v in row) + " |"
        for q, row in zip(mods, matrix)
    ]
    return (
        "\n".join([f"R@1, query modality (rows) -> gallery modality (columns); {note}", "", head, rule, *body]) + "\n"
    )


def run_pairs(
    checkpoint: str | Path,
    *,
    config: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate retrieval between every modality pair of ``checkpoint``; write ``pairs.json``,
    ``pairs.md`` and ``pairs_r1.png`` under ``out`` (default ``<checkpoint>/eval``).

    ``config`` may name several YAML files: each one's eval table is scored on its own pairs and the
    reports are merged into one table and heat-map over every modality (a model trained on several
    sets, ``data.mix``, has no one table with every modality; pairs no table holds stay blank)."""
    import time

    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    configs = [config] if config is None or isinstance(config, (str, Path)) else list(config)
    scored = [score_table(model, cfg, c, overrides) for c in configs]
    info = {
        "checkpoint": str(ckpt),
        "step": -1 if (s := checkpoint_step(ckpt)) is None else s,
        "embed_dim": cfg.model.embed_dim,
        "loss": cfg.model.loss,
        "modalities": model.modalities,
    }
    if len(scored) == 1:
        dataset, result = scored[0]
        title = f"R@1 ({result['settings']['positives']} positives)"
        note = f"positives: {result['settings']['positives']}; settings from {result['settings']['from']}"
        payload = {"dataset": dataset, "seconds": time.perf_counter() - t0, "pairs": result}
    else:
        result = merge_tables([str(c) for c in configs], scored)
        title = "R@1 (each pair on the eval table that holds it)"
        note = "each pair on the eval table that holds both: " + "; ".join(
            f"{t['config']} ({t['settings']['positives']} positives)" for t in result["tables"]
        )
        payload = {"dataset": [d for d, _ in scored], "seconds": time.perf_counter() - t0, "pairs": result}
    mods = result["modalities"]
    matrix = r1_table(mods, result)
    result["r1"] = {q: {g: v for g, v in zip(mods, row) if v is not None} for q, row in zip(mods, matrix)}
    report = build_report("pairs", payload, info)
    out = Path(out or ckpt / "eval")
    path = write_report(report, out / "pairs.json")
    report["markdown"] = markdown_table(mods, matrix, note)
    write_atomic(out / "pairs.md", report["markdown"])
    plot_pair_heatmap(matrix, mods, out / "pairs_r1.png", title)
    report["path"] = str(path)
    return report


def score_table(model, cfg, config: str | Path | None, overrides: Sequence[str]) -> tuple[dict, dict]:
    """One eval table's pairs: (the dataset's description, the pairs result)."""
    ecfg, settings_from = pairs_config(cfg, config, overrides)
    columns = list(ecfg.data.columns)
    mods = [m for m in columns if m in model.adapters]
    if len(mods) < 2:
        where = f" ({config})" if config else ""
        raise PairsError(
            f"config key 'eval.data.columns'{where}: pairs needs columns for at least 2 of the "
            f"checkpoint's modalities {model.modalities}; the eval data has {columns}"
        )
    dim = getattr(ecfg, "dim", None)
    if dim is not None and dim > cfg.model.embed_dim:
        raise ConfigError(f"config key 'eval.dim': {dim} is more than the model's embed_dim {cfg.model.embed_dim}")
    r = ecfg.retrieval
    previous, model.output_dim = getattr(model, "output_dim", None), dim  # a Matryoshka prefix, as evaluate
    try:
        with hf_progress(cfg.train.progress):
            table = load_table(ecfg.data, "eval.data")
            enc = encode_once(model, table, ecfg, mods)
    finally:
        model.output_dim = previous
    dataset = describe_spec(ecfg.data, table)
    if len(enc["kept"]) < len(table):
        dataset.update(
            skipped=len(table) - len(enc["kept"]),
            evaluated=len(enc["kept"]),
            skipped_rows=sorted(set(range(len(table))) - set(enc["kept"].tolist()))[:100],
        )
    result = {
        "settings": {
            "ks": list(r.ks),
            "positives": r.positives,
            "dedupe": bool(r.dedupe),
            "index": r.index,
            "dim": dim,
            "from": settings_from,
        },
        "modalities": mods,
        "ignored_columns": [m for m in columns if m not in mods],
        "encoded": enc["encoded"],
        "pairs": [pair_metrics(enc, a, b, r) for a, b in orient(mods, enc)],
    }
    return dataset, result


def merge_tables(configs: list[str], scored: list[tuple[dict, dict]]) -> dict[str, Any]:
    """Several tables' pairs as one result: modalities in order of first appearance, each pair tagged
    with its table; a pair two tables hold is kept from the first (the later one is listed under
    ``repeated``)."""
    mods = list(dict.fromkeys(m for _, res in scored for m in res["modalities"]))
    pairs, seen, repeated = [], set(), []
    for i, (_, res) in enumerate(scored):
        for p in res["pairs"]:
            key = frozenset((p["a"], p["b"]))
            (repeated if key in seen else pairs).append({**p, "table": i})
            seen.add(key)
    tables = [
        {
            "config": c,
            "settings": res["settings"],
            "modalities": res["modalities"],
            "encoded": res["encoded"],
            "ignored_columns": res["ignored_columns"],
        }
        for c, (_, res) in zip(configs, scored)
    ]
    return {
        "settings": tables[0]["settings"],
        "modalities": mods,
        "tables": tables,
        "pairs": pairs,
        "repeated": repeated,
    }
