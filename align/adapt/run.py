"""``align adapt RUN``: load a checkpoint and its data once, run the protocol, write the report,
the plot and the fitted heads (``<checkpoint>/adapted/<method>.safetensors``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from align.adapt.methods import Task
from align.adapt.protocol import DEFAULT_SHOTS, Pool, check_query, run_protocol
from align.adapt.report import plot_shots, write_markdown
from align.adapt.shots import base_classes as parse_base
from align.adapt.shots import draw_shots
from align.errors import ConfigError
from align.io.atomic import write_atomic
from align.model.adapted import ADAPTED_DIR, save_adapted

SCHEMA = "align.adapt/v1"


def resolve_run(target: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint, config file or None): a run's YAML config names its output_dir's checkpoint."""
    from align.model.checkpoint import resolve_checkpoint

    p = Path(target)
    if p.suffix.lower() in (".yaml", ".yml") and p.is_file():
        from align.config.schema import load_config

        cfg = load_config(p)
        try:
            return resolve_checkpoint(cfg.output_dir), p
        except FileNotFoundError:
            raise ConfigError(
                f"config key 'output_dir': {p} trains into {cfg.output_dir}, which holds no checkpoint yet "
                f"(align train {p} first)"
            ) from None
    return resolve_checkpoint(p), None


def build_task(model, cfg, ecfg, steps: dict[str, int] | None = None) -> tuple[Task, Pool, dict[str, Any]]:
    """The ``Task`` (classes, prompts, zero-shot classifier) and the embedded ``Pool``."""
    from align.data.labels import class_names, zeroshot_classes
    from align.data.tables import describe_spec, load_table
    from align.eval.runner import encode_table
    from align.eval.zeroshot import build_classifier

    zs = ecfg.zeroshot
    check_query(model, cfg, zs.query, "eval.zeroshot.query")
    train_spec, test_spec = cfg.data.train, ecfg.data
    train = load_table(train_spec, "data.train")
    test = load_table(test_spec, "eval.data")
    if not test_spec.label_column:
        raise ConfigError("config key 'eval.data.label_column': few-shot accuracy needs labelled test rows")
    test_labels = np.asarray(test[test_spec.label_column])
    names = zeroshot_classes(zs.classnames, class_names(test, test_spec.label_column), test_labels)
    train_names = class_names(train, train_spec.label_column)
    data_names = class_names(test, test_spec.label_column)
    if train_names is not None and data_names is not None and train_names != data_names:
        raise ConfigError(
            f"config key 'data.train.label_column': the training classes {train_names} are not the eval "
            f"classes {data_names} (in id order); shots and test rows must mean the same classes"
        )
    templates = zs.templates
    if isinstance(templates, dict) and isinstance(zs.classnames, dict):
        templates = {zs.classnames.get(c, c): t for c, t in templates.items()}
    zeroshot = build_classifier(model, names, templates, zs.prompt_modality)
    scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
    task = Task(model, zs.query, zs.prompt_modality, names, templates, zeroshot, scale, dict(steps or {}))
    train_labels = np.asarray(train[train_spec.label_column], dtype=np.int64)
    info = {"train": describe_spec(train_spec, train), "test": describe_spec(test_spec, test)}
    test_emb, test_y, _ = encode_table(
        model, test, {zs.query: test_spec.columns[zs.query]}, test_spec.label_column, ecfg.batch_size,
        name=f"eval.data ({test_spec.source})",
    )  # fmt: skip
    pool = Pool(train_labels, {}, test_emb[zs.query], torch.as_tensor(test_y, dtype=torch.long), train)
    return task, pool, info


def embed_draws(task: Task, pool: Pool, cfg, ecfg, classes: Sequence[int], k: int, seeds: int) -> None:
    """Embed the training rows any draw takes (each seed's largest draw holds its smaller ones)."""
    from align.eval.runner import encode_table

    rows = sorted({int(r) for s in range(seeds) for r in draw_shots(pool.train_labels, classes, k, s)})
    spec = cfg.data.train
    table = pool.train_table.select(rows)
    emb, _, kept = encode_table(
        task.model, table, {task.query: spec.columns[task.query]}, None, ecfg.batch_size,
        name=f"data.train ({spec.source})",
    )  # fmt: skip
    pool.train_emb.update({rows[int(i)]: e for i, e in zip(kept, emb[task.query])})


def run_adapt(
    target: str | Path,
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: int = 3,
    methods: Sequence[str] | None = None,
    base_classes: str | None = None,
    config: str | Path | None = None,
    out: str | Path | None = None,
    save: bool = True,
    steps: dict[str, int] | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the few-shot protocol on a checkpoint (or the run a YAML config trains); write
    ``<out>/adapt.json``, ``adapt.md``, ``adapt.png`` (default out: ``<checkpoint>/adapt``, or
    ``adapt-base-to-novel`` with ``base_classes``) and, unless ``save`` is off, each method's head
    fitted on the largest shot count with seed 0 into ``<checkpoint>/adapted/``."""
    from align.adapt.methods import check_methods
    from align.adapt.shots import check_shots
    from align.eval.commands import eval_config
    from align.model.checkpoint import load_model

    methods = check_methods(list(methods)) if methods else None  # before anything loads
    ckpt, run_config = resolve_run(target)
    model, cfg = load_model(ckpt)
    ecfg = eval_config("zeroshot", cfg, config or run_config)
    task, pool, info = build_task(model, cfg, ecfg, steps)
    classes = list(range(len(task.classnames))) if base_classes is None else parse_base(base_classes, task.classnames)
    check_shots(shots, pool.train_labels, task.classnames, classes)  # before encoding anything more
    embed_draws(task, pool, cfg, ecfg, classes, max(shots), seeds)
    log(f"align adapt: {ckpt} ({task.query} -> {len(task.classnames)} classes), shots {list(shots)}, {seeds} seed(s)")
    results = run_protocol(
        task, pool, shots, seeds, methods, None if base_classes is None else classes, keep_heads=save, log=log
    )
    heads = results.pop("heads", {})
    saved = {}
    if save and base_classes is None:
        for method, head in heads.items():
            head.info["shots"], head.info["seed"] = max(shots), 0
            saved[method] = str(save_adapted(head, ckpt / ADAPTED_DIR / f"{method}.safetensors"))
    report = {
        "schema": SCHEMA,
        "checkpoint": str(ckpt),
        "query": task.query,
        "prompt_modality": task.prompt_modality,
        "classnames": task.classnames,
        "data": info,
        **results,
        "saved": saved,
    }
    folder = Path(out or ckpt / ("adapt" if base_classes is None else "adapt-base-to-novel"))
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "adapt.json", json.dumps(report, indent=2))
    write_markdown(report, folder / "adapt.md")
    plot_shots(report, folder / "adapt.png")
    report["path"] = str(folder / "adapt.json")
    return report
