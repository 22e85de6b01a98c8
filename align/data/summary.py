"""Look before training: what each dataset of a config holds, and what the loss will pair.

``align data CONFIG`` (and ``align train --dry-run``) print this without training; ``align train``
prints it at the start and writes it to ``output_dir/data.json``. It shows rows per dataset,
classes with their id order and counts (the order zero-shot prompts are matched in), three sample
rows as the modalities will see them, and the modality pairs of the loss, so a wrong column, a
class order or an empty filter is visible before an hour of training.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from align.config.dataset import DatasetSpec
from align.config.objectives import parts_with
from align.config.schema import Config
from align.data.labels import class_names, zeroshot_classes
from align.data.tables import describe_spec, hf_progress, load_table
from align.io.atomic import write_atomic


def show_value(value: Any, width: int = 90) -> str:
    """A short readable form of one cell: text as is, media by path, arrays by shape."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        more = f"  (+{len(value) - 1} more)" if len(value) > 1 else ""
        return show_value(value[0], width) + more
    if isinstance(value, str):
        return repr(value if len(value) <= width else value[:width] + "...")
    if isinstance(value, dict):
        if value.get("path"):
            return f"file {value['path']}"
        if "bytes" in value:
            return f"<{len(value['bytes'] or b'')} bytes>"
        return "{" + ", ".join(f"{k}: {show_value(v, 30)}" for k, v in list(value.items())[:5]) + "}"
    if hasattr(value, "size") and hasattr(value, "mode"):  # PIL image
        return f"<image {value.size[0]}x{value.size[1]} {value.mode}>"
    shape = getattr(value, "shape", None)
    if shape is None and isinstance(value, (list, tuple)):
        try:
            shape = np.asarray(value).shape
        except ValueError:
            return f"<list of {len(value)}>"
    if shape is not None:
        return f"<array {list(shape)}>"
    return repr(value)[:width]


def summarize_table(spec: DatasetSpec, table, key: str, n_samples: int = 3) -> dict[str, Any]:
    """Rows, classes (id, name, count, in id order) and a few sample rows of one loaded table."""
    out = describe_spec(spec, table)
    out["key"] = key
    out["columns"] = dict(spec.columns)
    if spec.label_column:
        counts = Counter(np.asarray(table[spec.label_column]).tolist())
        names = class_names(table, spec.label_column)
        ids = range(len(names)) if names is not None else sorted(counts)
        out["classes"] = [
            {"id": int(i), "name": names[i] if names is not None else None, "count": counts.get(i, 0)} for i in ids
        ]
    picks = np.linspace(0, len(table) - 1, num=min(n_samples, len(table))).round().astype(int)
    samples = []
    for i in dict.fromkeys(picks.tolist()):
        row = table[int(i)]
        s = {"row": int(i), **{m: show_value(row[c]) for m, c in spec.columns.items()}}
        if spec.label_column:
            lab = row[spec.label_column]
            names = class_names(table, spec.label_column)
            s["label"] = f"{lab} ({names[lab]})" if names is not None else str(lab)
        samples.append(s)
    out["samples"] = samples
    return out


def summarize_config(cfg: Config, tables: dict[str, Any]) -> dict[str, Any]:
    """The whole look: each loaded table (``tables``: config key -> table), the loss pairs and,
    when there is a zero-shot eval, the class names prompts will use in id order."""
    specs = {
        **{k: s for k, s, _ in cfg.data.train_parts()},
        "data.val": cfg.data.val,
        "eval.data": cfg.eval.data if cfg.eval else None,
    }
    out: dict[str, Any] = {"datasets": [summarize_table(specs[k], t, k) for k, t in tables.items()]}
    named = {k: class_names(t, specs[k].label_column) for k, t in tables.items() if specs[k].label_column}
    out["warnings"] = [
        f"{k} has classes {v}, but data.train has {named['data.train']}: class ids differ "
        f"between them (give label_names on both to fix one class list)"
        for k, v in named.items()
        if k != "data.train" and named.get("data.train") is not None and v is not None and v != named["data.train"]
    ]
    out["pairs"] = [
        f"{a} <-> {b}: row i's '{s.columns[a]}' with row i's '{s.columns[b]}'"
        + (f" ({k})" if cfg.data.mix is not None else "")
        for a, b in cfg.loss_pairs()
        for k, s in parts_with(cfg, (a, b))
    ]
    if cfg.data.mix is not None:
        total = sum(w for _, _, w in cfg.data.train_parts())
        out["mix"] = [{"key": k, "weight": w, "share": w / total} for k, _, w in cfg.data.train_parts()]
    if cfg.train.multiway is not None:
        mw = cfg.train.multiway
        out["pairs"].append(f"{mw.loss} over {', '.join(mw.modalities)}: row i's columns together")
    if cfg.eval is not None and cfg.eval.zeroshot is not None and "eval.data" in tables:
        spec, table = cfg.eval.data, tables["eval.data"]
        out["zeroshot_classes"] = zeroshot_classes(
            cfg.eval.zeroshot.classnames, class_names(table, spec.label_column), np.asarray(table[spec.label_column])
        )
    return out


def load_and_summarize(cfg: Config) -> dict[str, Any]:
    """Load every dataset the config names (no model, no training) and summarise them."""
    specs = {
        **{k: s for k, s, _ in cfg.data.train_parts()},
        "data.val": cfg.data.val,
        "eval.data": cfg.eval.data if cfg.eval else None,
    }
    with hf_progress(cfg.train.progress):
        tables = {k: load_table(s, k) for k, s in specs.items() if s is not None}
    return summarize_config(cfg, tables)


def describe_source(d: dict[str, Any]) -> str:
    """Where rows come from, as one phrase: the source, its split, the ``where`` filter and the
    holdout side with its group, so held-out test rows of a 'train' split never read as 'train'."""
    text = f"{d['source']} split '{d['split']}'"
    if d.get("where"):
        text += f", where {d['where']}"
    hold = d.get("holdout")
    if hold:
        folds = hold.get("folds")
        how = f"fold {hold['fold']} of {folds}" if folds else f"test_fraction {hold['test_fraction']}"
        group = f", group '{hold['group']}'" if hold.get("group") else ""
        text += f", holdout {hold['take']} ({how}, seed {hold['seed']}{group})"
    return text


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for d in summary["datasets"]:
        lines.append(f"{d['key']}: {d['rows']} rows from {describe_source(d)}")
        lines.append("  columns: " + ", ".join(f"{m} <- '{c}'" for m, c in d["columns"].items()))
        if d.get("classes"):
            lines.append(
                "  classes (id: name count): "
                + ", ".join(
                    f"{c['id']}: {c['name'] if c['name'] is not None else '?'} {c['count']}" for c in d["classes"]
                )
            )
        for s in d["samples"]:
            lines.append(f"  row {s['row']}: " + "; ".join(f"{k} {v}" for k, v in s.items() if k != "row"))
    if summary.get("mix"):
        lines.append(
            "mixture, share of draws: "
            + ", ".join(f"{m['key']} {m['share']:.0%} (weight {m['weight']:g})" for m in summary["mix"])
        )
    lines.append("loss terms: " + "; ".join(summary["pairs"]))
    lines += [
        f"fitted on the training data: {key}: {', '.join(names)}" for key, names in summary.get("fitted", {}).items()
    ]
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    if summary.get("zeroshot_classes"):
        lines.append("zero-shot prompts name the classes, in id order: " + ", ".join(summary["zeroshot_classes"]))
    return "\n".join(lines)


def look_at_data(cfg: Config, accelerator, loader, val_loader, fitted: dict[str, list[str]] | None = None) -> None:
    """At the start of ``align train``: print what the run will train on (rows, classes in id
    order, samples, loss pairs, options the adapters fitted on the training data) and write it to
    ``output_dir/data.json``; the eval data is loaded too, so a wrong eval column or class list
    fails now rather than after training."""
    import json
    from pathlib import Path

    parts = getattr(loader.dataset, "parts", None)  # data.mix: one table per training set
    tables = (
        {k: p.table for (k, _, _), p in zip(cfg.data.train_parts(), parts)}
        if parts is not None
        else {"data.train": loader.dataset.table}
    )
    if val_loader is not None:
        tables["data.val"] = val_loader.dataset.table
    if cfg.eval is not None:
        tables["eval.data"] = load_table(cfg.eval.data, "eval.data")
    summary = summarize_config(cfg, tables)
    summary["fitted"] = {f"model.modalities.{m}.options": names for m, names in (fitted or {}).items()}
    if accelerator.is_main_process:
        accelerator.print(format_summary(summary))
        write_atomic(Path(cfg.output_dir) / "data.json", json.dumps(summary, indent=2, default=str))
