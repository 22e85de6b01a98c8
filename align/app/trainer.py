"""``train``: the training loop (``align.training.loop``) with evaluation (``align.eval``) wired in.

This is the application layer. The loop evaluates during training (``train.eval_every``, the
best checkpoint) and at the end (``train.eval_at_end``), but the training layer sits below the
evaluation layer and never imports it: the evaluation is handed in here as ``EvalHooks``.
"""

from __future__ import annotations

from pathlib import Path

from align.config.schema import Config
from align.data.summary import describe_source
from align.eval.control import run_control
from align.eval.report import build_report, write_report
from align.eval.runner import evaluate
from align.model.align_model import AlignModel
from align.training.loop import EvalHooks, TrainResult, flat_eval_metrics, run_training


def write_eval_reports(cfg: Config, core: AlignModel, accelerator, result: TrainResult, step: int) -> None:
    """The final eval metrics as ``align.eval/v1`` reports in ``output_dir/eval/``, and one line."""
    metrics = result.eval_metrics
    if not accelerator.is_main_process or metrics is None:
        return
    info = {
        "checkpoint": str(result.final_checkpoint),
        "step": step,
        "embed_dim": cfg.model.embed_dim,
        "loss": cfg.model.loss,
        "modalities": core.modalities,
    }
    for task in ("zeroshot", "retrieval", "probe"):
        if metrics.get(task) is not None:
            others = {k: v for k, v in metrics.items() if k not in ("zeroshot", "retrieval", "probe") or k == task}
            path = write_report(build_report(task, others, info), Path(cfg.output_dir) / "eval" / f"{task}.json")
            result.eval_reports.append(path)
    line = "  ".join(f"{k} {v:.4f}" for k, v in flat_eval_metrics(metrics).items() if k.count("/") <= 2)
    accelerator.print(f"eval ({describe_source(metrics['dataset'])}, {metrics['dataset']['rows']} rows): {line}")


EVAL_HOOKS = EvalHooks(evaluate=evaluate, write_reports=write_eval_reports, control=run_control)


def train(cfg: Config, resume: bool = False, stop_at: int | None = None) -> TrainResult:
    """Train as configured, evaluating as the config's ``train`` and ``eval`` sections say.
    ``stop_at`` ends the run early after that step (to simulate an interrupted run); ``resume``
    continues from ``output_dir/checkpoints/latest``."""
    return run_training(cfg, resume=resume, stop_at=stop_at, hooks=EVAL_HOOKS)
