"""``align crossval CONFIG``: k-fold cross-validation of a whole train + eval run.

Graph-classification results (MUTAG, PROTEINS, ENZYMES) are reported as the mean and standard
deviation over the test folds of a stratified k-fold split, because one 10% fold of 188 graphs is
too small to rank methods. For each fold k this sets the fold in ``data.train``, ``data.val`` and
``align.eval.data`` -- ``holdout.fold`` for any source with a ``holdout`` section (csv, parquet,
imagefolder, ...), or ``load_kwargs.fold`` for builtins with their own folds (``tu-dataset``,
``packed-npz``) -- trains into ``<output_dir>/fold<k>`` and runs the config's eval section on the
fold's test side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any


def run_crossval(
    config: str | Path, overrides: list[str] | None = None, folds: int | None = None, only: list[int] | None = None
) -> dict[str, Any]:
    """Train and evaluate every fold (or the folds in ``only``); returns per-fold and summary
    metrics and writes them to ``<output_dir>/crossval.json``."""
    from align.config.schema import load_config
    from align.errors import ConfigError
    from align.training.runlock import RunLock

    overrides = list(overrides or [])
    base = load_config(config, overrides)
    if base.eval is None:
        raise ConfigError("config key 'eval': cross-validation needs an eval section")
    if base.data.mix is not None:
        raise ConfigError("config key 'data.mix': crossval splits one training table into folds; give data.train")
    train_spec = base.data.train
    folds = (
        folds
        or (train_spec.holdout.folds if train_spec.holdout is not None else None)
        or int(train_spec.load_kwargs.get("folds", 10))
    )
    specs = {"data.train": train_spec, "eval.data": base.eval.data}
    if base.data.val is not None:
        specs["data.val"] = base.data.val
    set_fold = fold_setters(specs)
    out_root = Path(base.output_dir)
    # the root holds crossval.json, written from every fold's result: one cross-validation per root
    # (each fold's own run folder is locked by its training run); the main process holds it
    lock = RunLock(out_root).acquire() if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        return _folds(config, overrides, folds, only, base, set_fold, out_root)
    finally:
        if lock is not None:
            lock.release()


def _folds(
    config, overrides: list[str], folds: int, only, base, set_fold: dict[str, str], out_root: Path
) -> dict[str, Any]:
    from align.app.trainer import train
    from align.config.schema import load_config
    from align.errors import ConfigError
    from align.eval.runner import evaluate
    from align.training.loop import flat_eval_metrics

    per_fold: list[dict[str, Any]] = []
    for k in only if only is not None else range(folds):
        if not 0 <= k < folds:
            raise ConfigError(f"fold {k} is outside 0..{folds - 1}")
        fold_overrides = overrides + [f"output_dir={out_root / f'fold{k}'}"]
        fold_overrides += [
            f"{section}.{n}={v}" for section in set_fold.values() for n, v in (("fold", k), ("folds", folds))
        ]
        cfg = load_config(config, fold_overrides)
        result = train(cfg)
        if not result.is_main_process:
            continue
        metrics = result.eval_metrics or evaluate(result.model, cfg.eval)
        per_fold.append(
            {
                "fold": k,
                "train_samples_per_s": result.samples_per_s,
                "n_test": metrics["dataset"]["rows"],
                **flat_eval_metrics(metrics),
            }
        )
        print(
            f"fold {k}: "
            + "  ".join(
                f"{m} {v:.4f}" for m, v in per_fold[-1].items() if m.startswith("zeroshot/") and m.count("/") == 1
            )
        )
    summary = {}
    for key in per_fold[0] if per_fold else {}:
        if key in ("fold", "n_test", "train_samples_per_s"):
            continue
        values = [f[key] for f in per_fold]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
        summary[key] = {"mean": mean, "std": std}
    report = {"config": str(config), "overrides": overrides, "folds": folds, "per_fold": per_fold, "summary": summary}
    out_root.mkdir(parents=True, exist_ok=True)
    from align.io.atomic import write_atomic

    write_atomic(out_root / "crossval.json", json.dumps(report, indent=2))  # whole or not there
    report["path"] = str(out_root / "crossval.json")
    return report


def fold_setters(specs: dict) -> dict[str, str]:
    """Config key -> the section whose ``fold`` / ``folds`` select a fold of that dataset."""
    from align.data.sources import FOLD_SOURCES
    from align.errors import ConfigError

    out = {}
    for key, spec in specs.items():
        side = "train" if key == "data.train" else "test"
        if spec.holdout is not None:
            if key != "data.val" and spec.holdout.take != side:
                raise ConfigError(
                    f"config key '{key}.holdout.take': cross-validation trains on the "
                    f"'train' side and evaluates on the 'test' side; {key} takes "
                    f"'{spec.holdout.take}'"
                )
            out[key] = f"{key}.holdout"
        elif spec.source in FOLD_SOURCES:
            out[key] = f"{key}.load_kwargs"
        else:
            raise ConfigError(
                f"config key '{key}.holdout': cross-validation on source '{spec.source}' "
                f"needs a holdout section, e.g. holdout: {{take: {side}, folds: 5}}"
            )
    return out


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="YAML config whose datasets have a holdout section (any source) or a "
        "builtin fold option (tu-dataset, packed-npz)",
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: the config's, else 10)")
    p.add_argument("--only", type=int, nargs="+", default=None, help="run just these folds")


def cli(args: argparse.Namespace) -> int:
    report = run_crossval(args.config, args.overrides, args.folds, args.only)
    for key, s in report["summary"].items():
        if key.count("/") == 1 or key.endswith(("R@1", "R@10", "MRR")):
            print(f"{key:<40} {s['mean']:.4f} ± {s['std']:.4f}")
    print(f"report: {report['path']}")
    return 0
