"""``align eval zeroshot|retrieval``: evaluate a checkpoint and write a report + plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

from align.config.schema import EvalConfig, _format_validation_error, parse_overrides, set_dotted
from align.data.tables import hf_progress
from align.errors import AlignError, ConfigError
from align.eval.plots import plot_confusion_matrix, plot_query_grid, plot_recall_curve
from align.eval.report import build_report, write_report
from align.eval.runner import evaluate
from align.eval.zeroshot_metrics import load_templates
from align.index.embedding_index import EmbeddingIndex
from align.modalities.image import load_image
from align.model.checkpoint import checkpoint_step, load_model, resolve_checkpoint


class EvalError(AlignError, ValueError):
    """The evaluation asked for something the checkpoint or data cannot give; names what."""


def eval_config(
    task: Literal["zeroshot", "retrieval", "pairs", "probe"],
    ckpt_cfg,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    templates: str | Path | None = None,
):
    """The eval section: from ``config`` (a YAML file) if given, else the checkpoint's own; then the
    ``eval.*`` dotted overrides and a templates file."""
    from align.config.safe_yaml import load_yaml_file

    if config:
        data = load_yaml_file(config) or {}  # bounded, as every config read (an alias bomb is refused)
        section = data.get("eval") if isinstance(data, dict) else None
        if section is None:
            raise ConfigError(f"config key 'eval': {config} has no eval section")
    elif ckpt_cfg.eval is not None:
        section = ckpt_cfg.eval.model_dump(mode="json", by_alias=True)
    else:
        raise ConfigError("config key 'eval': the checkpoint's config has none; pass --config FILE")
    if task == "probe" and not section.get("probe"):
        section = {**section, "probe": {}}  # the defaults: the zero-shot query, fitted on data.train
    root = {"eval": section}
    for key, value in parse_overrides(list(overrides)):
        set_dotted(root, key if key.startswith("eval.") else f"eval.{key}", value)
    from pydantic import ValidationError

    try:
        ecfg = EvalConfig.model_validate(root["eval"])
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "eval.")) from None
    if templates:
        if ecfg.zeroshot is None:
            raise ConfigError("config key 'eval.zeroshot': --templates needs a zeroshot section")
        ecfg.zeroshot.templates = load_templates(templates)
    if task == "zeroshot" and ecfg.zeroshot is None:
        raise ConfigError("config key 'eval.zeroshot': missing (classnames, templates)")
    if task == "retrieval" and ecfg.retrieval is None:
        raise ConfigError("config key 'eval.retrieval': missing (a, b modalities)")
    if task == "probe":
        if ecfg.probe.data is None:
            if ckpt_cfg.data.train is None:
                raise ConfigError("config key 'eval.probe.data': the checkpoint's run has no data.train to fit on")
            ecfg.probe.data = ckpt_cfg.data.train.model_copy(deep=True)
        ecfg.zeroshot = ecfg.retrieval = None
        return ecfg
    ecfg.probe = None
    if task == "zeroshot":
        ecfg.retrieval = None
    else:
        ecfg.zeroshot = None
    return ecfg


def resolve_adapter(ckpt: Path, adapter: str | Path) -> Path:
    """A file, or the name of one saved beside the checkpoint (``<checkpoint>/adapted/<name>.safetensors``)."""
    from align.model.adapted import adapted_files

    if Path(adapter).is_file():
        return Path(adapter)
    saved = adapted_files(ckpt)
    if str(adapter) in saved:
        return saved[str(adapter)]
    raise EvalError(f"--adapter {adapter}: no such file, and {ckpt}/adapted holds {sorted(saved) or 'nothing'}")


def run_eval(
    task: Literal["zeroshot", "retrieval", "probe"],
    checkpoint: str | Path,
    *,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    templates: str | Path | None = None,
    out: str | Path | None = None,
    adapter: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a checkpoint, its checkpoints/ root or a run folder) and write the
    report (``<out>/<task>.json``, default out: ``<checkpoint>/eval``) with its plots. ``adapter``
    (zero-shot only): a few-shot head ``align adapt`` saved (a file, or its name in
    ``<checkpoint>/adapted/``) classifies instead of the prompt templates."""
    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    ecfg = eval_config(task, cfg, config, overrides, templates)
    if task == "probe":
        mods = [ecfg.probe.query]
    elif task == "zeroshot":
        mods = [ecfg.zeroshot.query] + ([] if adapter else [ecfg.zeroshot.prompt_modality])
    else:
        mods = [ecfg.retrieval.a, ecfg.retrieval.b]
    for mod in mods:
        if mod not in model.adapters:
            raise EvalError(f"checkpoint {ckpt} has no modality '{mod}' to {task} (it has {model.modalities})")
    if adapter:
        ecfg.zeroshot.adapter = str(resolve_adapter(ckpt, adapter))
    keep: dict = {}

    with hf_progress(cfg.train.progress):  # the run's own setting
        metrics = evaluate(model, ecfg, keep=keep)
    step = checkpoint_step(ckpt)  # from the weights' metadata: training_state.pt is not needed to evaluate
    info = {
        "checkpoint": str(ckpt),
        "step": -1 if step is None else step,
        "embed_dim": cfg.model.embed_dim,
        "loss": cfg.model.loss,
        "modalities": model.modalities,
    }
    report = build_report(task, metrics, info)
    out = Path(out or ckpt / "eval")
    path = write_report(report, out / f"{task}.json")
    if task in ("zeroshot", "probe"):
        zs = report["metrics"]
        what = "linear probe" if task == "probe" else "zero-shot"
        name = "probe_confusion.png" if task == "probe" else "confusion.png"
        plot_confusion_matrix(zs["confusion_matrix"], zs["classnames"], out / name, f"{what} top-1 {zs['top1']:.3f}")
    else:
        plot_recall_curve(report["metrics"], out / "recall_at_k.png")
        if "image" in (ecfg.retrieval.a, ecfg.retrieval.b):
            query_grid(keep, ecfg, out / "queries.png")
    report["path"] = str(path)
    return report


def query_grid(keep: dict, ecfg, path: Path, n_queries: int = 6, k: int = 5) -> None:
    """Top-k images for the first few queries of the other modality (text captions as queries)."""
    import numpy as np

    r = ecfg.retrieval
    image_side, query_side = (r.a, r.b) if r.a == "image" else (r.b, r.a)
    images = keep["embeddings"]["image"]
    if query_side == r.b:
        q_emb, q_items, q_rows = keep["b_embeddings"], keep["b_items"], keep["b_source"]
    else:
        q_emb, q_items, q_rows = keep["embeddings"][query_side], None, np.arange(len(images))
    picks = np.linspace(0, len(q_emb) - 1, num=min(n_queries, len(q_emb))).astype(int)
    index = EmbeddingIndex(images.shape[1])
    index.add(images)
    scores, ids = index.search(q_emb[picks], k)
    labels = keep["labels"]
    column = ecfg.data.columns["image"]
    results = []
    for row, (s_row, id_row) in enumerate(zip(scores, ids)):
        src = q_rows[picks[row]]
        hits = []
        for score, i in zip(s_row, id_row):
            positive = (labels[i] == labels[src]) if r.positives == "label" else (i == src)
            hits.append((load_image(keep["table"][int(i)][column]), float(score), bool(positive)))
        results.append(hits)
    queries = [str(q_items[i]) if q_items is not None else f"row {q_rows[i]}" for i in picks]
    plot_query_grid(queries, results, path, f"{query_side} -> image: top {k} (green = positive)")
