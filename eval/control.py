"""Forgetting, measured every time (``eval.control``): sets the run does not train on, evaluated on the
model before its first step and after its last, side by side.

Fine-tuning a pretrained model on a narrow set is known to cost it elsewhere (open_clip and CLIP
users' "zero-shot accuracy collapsed after fine-tuning"; WiSE-FT's out-of-distribution losses).
Each control config's eval section is scored as the eval section is (``align.eval.runner.evaluate``);
the "before" scores are written to ``<output_dir>/eval/control_before.json`` (so a resumed run still
compares with the start), the comparison to ``control.json`` and ``control.md``, and every metric that
fell by more than ``eval.control_max_drop`` is printed as a warning naming the set and the metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.eval.runner import evaluate


def load_eval_section(path: str | Path):
    """The eval section of a YAML file, zero-shot and retrieval both kept (an ``EvalConfig``)."""
    from pydantic import ValidationError

    from align.config.safe_yaml import load_yaml_file
    from align.config.schema import EvalConfig, _format_validation_error
    from align.errors import ConfigError

    data = load_yaml_file(path) or {}
    section = data.get("eval") if isinstance(data, dict) else None
    if section is None:
        raise ConfigError(f"config key 'eval': {path} has no eval section")
    try:
        ecfg = EvalConfig.model_validate(section)
    except ValidationError as err:
        raise ConfigError(f"{path}: " + _format_validation_error(err, "eval.")) from None
    if ecfg.zeroshot is None and ecfg.retrieval is None:
        raise ConfigError(f"config key 'eval': {path} asks for neither zeroshot nor retrieval")
    return ecfg


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """Zero-shot top-1 / top-5 / mean per-class recall and every retrieval R@k, mAP and MRR."""
    out: dict[str, float] = {}
    zs = metrics.get("zeroshot") or {}
    for key in ("top1", "top5", "mean_per_class_recall"):
        if isinstance(zs.get(key), float):
            out[f"zeroshot/{key}"] = zs[key]
    for key, value in (metrics.get("retrieval") or {}).items():
        if isinstance(value, float) and ("/R@" in key or key.endswith(("/mAP", "/MRR"))):
            out[f"retrieval/{key}"] = value
    return out


def control_sets(cfg, model, accelerator=None) -> dict[str, dict[str, float]]:
    return {str(p): headline(evaluate(model, load_eval_section(p), accelerator)) for p in cfg.eval.control}


def run_control(cfg, model, accelerator, phase: str) -> dict[str, Any] | None:
    """The hook ``align.app.trainer`` hands the loop: ``phase`` "before" or "after"."""
    if cfg.eval is None or not cfg.eval.control:
        return None
    scores = control_sets(cfg, model, accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return None
    folder = Path(cfg.output_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    from align.io.atomic import write_atomic

    if phase == "before":
        write_atomic(folder / "control_before.json", json.dumps(scores, indent=1))
        return {"before": scores}
    before = json.loads((folder / "control_before.json").read_text())
    limit = cfg.eval.control_max_drop
    rows, warnings = [], []
    for name, after in scores.items():
        for key, value in after.items():
            start = before.get(name, {}).get(key)
            delta = None if start is None else value - start
            rows.append({"set": name, "metric": key, "before": start, "after": value, "change": delta})
            if delta is not None and -delta > limit:
                warnings.append(f"forgetting: {Path(name).stem} {key} fell {start:.4f} -> {value:.4f} ({delta:+.4f})")
    table = ["| control set | metric | before | after | change |", "|---|---|---|---|---|"]
    for r in rows:
        b = "-" if r["before"] is None else f"{r['before']:.4f}"
        c = "-" if r["change"] is None else f"{r['change']:+.4f}"
        table.append(f"| {Path(r['set']).stem} | {r['metric']} | {b} | {r['after']:.4f} | {c} |")
    record = {"max_drop": limit, "rows": rows, "warnings": warnings}
    write_atomic(folder / "control.json", json.dumps(record, indent=1))
    write_atomic(folder / "control.md", "\n".join(table) + "\n")
    say = accelerator.print if accelerator is not None else print
    say("control sets, before the first step and after the last:\n" + "\n".join(table))
    for line in warnings:
        say(f"WARNING {line} (more than eval.control_max_drop {limit})")
    return record
