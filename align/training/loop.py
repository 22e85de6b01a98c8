"""Training on Accelerate: one process or many, CPU or GPU, same code.

The step is: encode each modality -> gather features across processes with gradients -> loss
over the configured modality pairs -> backward -> clip -> AdamW -> cosine schedule -> clamp the
temperature. There is deliberately no plain gradient accumulation: for a contrastive loss it
would silently shrink the set of negatives.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from align.config.schema import Config
from align.cpu import ThreadGovernor
from align.data.tables import hf_progress
from align.errors import AlignError, ConfigError
from align.model.align_model import AlignModel
from align.model.checkpoint import save_checkpoint
from align.objectives.task import ContrastiveTask
from align.training.engine import build_accelerator, leave_cores_for_workers
from align.training.gradcache import cached_loss
from align.training.resume import clean_leftovers, restored_best, set_aside_previous_run
from align.training.run_state import RunState, open_records, start_run
from align.training.runlock import lock_run


class TrainingError(AlignError, RuntimeError):
    """Training stopped on bad numerics; the message names the step and the saved checkpoint."""


@dataclass
class TrainResult:
    model: AlignModel
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best: tuple[int, float] | None = None
    output_dir: Path | None = None
    final_checkpoint: Path | None = None
    samples_per_s: float | None = None
    is_main_process: bool = True
    skipped: int = 0  # training samples that failed to load and were replaced (data.train.on_error: skip)
    eval_metrics: dict[str, Any] | None = None  # the eval section on the final model (train.eval_at_end)
    eval_reports: list[Path] = field(default_factory=list)


@dataclass
class EvalHooks:
    """What the loop needs from the evaluation layer above it, handed in by ``align.app.trainer`` (layers
    point down: this module never imports ``align.eval``). ``evaluate(model, eval_cfg, accelerator)``
    returns the eval section's metrics (every process calls it); ``write_reports(cfg, model,
    accelerator, result, step)`` records the final ones."""

    evaluate: Callable[..., dict[str, Any]]
    write_reports: Callable[..., None] | None = None
    # control(cfg, model, accelerator, phase): eval.control's sets, "before" the first step and "after" the last
    control: Callable[..., None] | None = None


def flat_eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar eval metrics as 'zeroshot/top1', 'retrieval/image_to_text/R@1', 'probe/top1', ... (for
    logs and ``train.best_metric``)."""
    out = {}
    for section in ("zeroshot", "retrieval", "probe"):
        for key, value in (metrics.get(section) or {}).items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (key in ("top1", "top5", "mean_per_class_recall") or "/" in key)
            ):
                out[f"{section}/{key}"] = float(value)
    return out


@torch.no_grad()
def validation_loss(accelerator, model, task: ContrastiveTask, loader) -> float:
    """Mean contrastive loss over the validation set (every process takes its shard)."""
    model.eval()
    total = torch.zeros((), device=accelerator.device)
    for n, batch in enumerate(loader, start=1):
        with accelerator.autocast():
            total += task(model, batch).float()
    model.train()
    return accelerator.reduce(total / max(n, 1), reduction="mean").item()


def train_step(
    accelerator,
    model,
    task: ContrastiveTask,
    batch: dict,
    optimizer,
    scheduler,
    grad_clip: float | None = None,
    on_nonfinite=None,
) -> torch.Tensor:
    """One optimizer step on one batch; returns the loss averaged over processes (detached).
    ``model`` is what Accelerate prepared (maybe DDP-wrapped); the task holds the loss.

    ``on_nonfinite(loss, batch)`` is called, before any update, when the loss is NaN/inf on any
    process. The check and the loss average travel in one all-reduce, so a step costs one host
    sync, not two.
    """
    if task.micro_batch_size:  # GradCache: towers see micro-batches, the loss the whole batch
        loss, backward = cached_loss(accelerator, model, task, batch, task.micro_batch_size)
    else:
        with accelerator.autocast():
            loss = task(model, batch)

        def backward() -> None:
            accelerator.backward(loss)

    local = loss.detach().float()
    if on_nonfinite is not None:
        stats = accelerator.reduce(torch.stack([local, torch.isfinite(local).float()]), reduction="mean")
        mean_loss, finite = stats.tolist()
        if finite < 1.0:
            on_nonfinite(loss, batch)
        mean_loss = torch.tensor(mean_loss)
    else:
        mean_loss = accelerator.reduce(local, reduction="mean")
    backward()
    if grad_clip:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    task.after_step()  # temperature clamp; momentum towers and queues (model.momentum)
    return mean_loss


def run_training(
    cfg: Config, resume: bool = False, stop_at: int | None = None, hooks: EvalHooks | None = None
) -> TrainResult:
    """Run training as configured. ``stop_at`` ends the run early after that step (used to
    simulate an interrupted run); ``resume`` continues from ``output_dir/checkpoints/latest``.
    ``hooks`` evaluate during and after training (``align.app.trainer.train`` passes align.eval's);
    without them ``train.eval_every`` is refused and the final evaluation is left to the caller."""
    if hooks is None and cfg.train.eval_every:
        raise ConfigError(
            "config key 'train.eval_every': evaluating during training needs the eval "
            "hooks: call align.app.trainer.train"
        )
    previous = leave_cores_for_workers(cfg.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    try:
        with hf_progress(cfg.train.progress):
            return _train(cfg, resume, stop_at, hooks)
    finally:
        if previous is not None:
            torch.set_num_threads(previous)


def _train(cfg: Config, resume: bool, stop_at: int | None, hooks: EvalHooks | None) -> TrainResult:
    """Hold ``output_dir``'s run lock (align/training/runlock.py) from before the data loads until the run
    ends, however it ends: one writer per run folder."""
    accelerator = build_accelerator(cfg)
    lock = lock_run(accelerator, cfg.output_dir)
    try:
        if accelerator.is_main_process:
            for path in clean_leftovers(cfg.output_dir):
                accelerator.print(f"removed {path}, left by an interrupted run")
            moved = None if resume else set_aside_previous_run(cfg.output_dir)
            if moved is not None:
                accelerator.print(
                    f"moved the checkpoints of an earlier run in {cfg.output_dir} to {moved} "
                    "(a fresh run; pass --resume to continue one)"
                )
        accelerator.wait_for_everyone()
        return _run(cfg, accelerator, resume, stop_at, hooks)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Config, accelerator, resume: bool, stop_at: int | None, hooks: EvalHooks | None) -> TrainResult:
    """The run from top to bottom: set up, open the records, train step by step, finish."""
    from tqdm.auto import tqdm

    run = start_run(cfg, accelerator, resume)  # seed, data, model, optimizer, restored state, prepared
    open_records(run)  # config.yaml, trackers, the log (trimmed to the checkpoint on resume)
    result = _new_result(run)
    tc = cfg.train
    bar = tqdm(
        total=tc.steps,
        initial=run.start,
        disable=not (tc.progress and accelerator.is_main_process),
        desc="train",
        dynamic_ncols=True,
    )
    if hooks is not None and hooks.control is not None and not run.resuming:  # forgetting: the sets before
        hooks.control(cfg, run.core, accelerator, "before")
    _begin_training(run, stop_at)  # train mode, the seed again for a fresh run, the clocks
    on_nonfinite = partial(_stop_on_nonfinite, run, result)
    governor = ThreadGovernor()  # one thread while other processes want the cores (align/cpu.py)
    while run.step < run.end:
        for batch in _epoch_batches(run):
            governor.tick()
            loss_value = train_step(
                accelerator,
                run.model,
                run.task,
                batch,
                run.optimizer,
                run.scheduler,
                tc.grad_clip,
                on_nonfinite=on_nonfinite,
            ).item()
            _count_step(run, result, batch, loss_value)
            bar.update(1)
            if run.step % tc.log_every == 0 or run.step == run.end:
                _log_train(run, result, loss_value)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if run.val_loader is not None and ((tc.val_every and run.step % tc.val_every == 0) or run.step == tc.steps):
                _validate(run, result)
            if tc.eval_every and (run.step % tc.eval_every == 0 or run.step == tc.steps):
                _evaluate(run, result, hooks)
            if tc.checkpoint_every and run.step % tc.checkpoint_every == 0:
                run.last_ckpt = _checkpoint(run, result, run.step)
            if run.step >= run.end:
                break
    bar.close()
    governor.close()
    _finish(run, result, hooks)
    return result


def _new_result(run: RunState) -> TrainResult:
    """The run's records; on resume, the best eval score so far comes back with the checkpoint."""
    result = TrainResult(
        model=run.core, output_dir=run.out, is_main_process=run.accelerator.is_main_process, skipped=run.skipped_before
    )
    if run.resuming:
        result.best = restored_best(
            run.restored, run.out / "checkpoints", run.log_path, run.cfg.train.best_metric, run.start
        )
    return result


def _begin_training(run: RunState, stop_at: int | None) -> None:
    """Where the run starts and ends, train mode, the seed again for a fresh run (right before the
    first batch: setup may consume global RNGs), the clocks and the skipped-sample counter."""
    from accelerate.utils import set_seed

    tc = run.cfg.train
    run.steps_per_epoch = None if run.streaming else len(run.loader)
    run.skipping = any(spec.on_error == "skip" for _, spec, _ in run.cfg.data.train_parts())
    run.step, run.end = run.start, (min(tc.steps, stop_at) if stop_at else tc.steps)
    run.model.train()
    if not run.resuming:
        set_seed(run.cfg.seed)
    run.t0, run.seen = time.perf_counter(), 0
    run.t_log, run.seen_at_log = run.t0, 0
    # counted per process and summed when logged: the resumed count goes to the main process only
    run.skipped = torch.tensor(
        run.skipped_before if run.accelerator.is_main_process else 0, device=run.accelerator.device
    )


def _epoch_batches(run: RunState) -> Iterable[dict]:
    """The batches left in the current epoch: the sampler and the augmentations set to that epoch,
    the ones already trained on skipped (the stream keeps its own epoch and position)."""
    if run.streaming:
        return run.loader.epoch_batches(run.accelerator.device)
    epoch, skip = divmod(run.step, run.steps_per_epoch)
    run.loader.set_epoch(epoch)  # the sampler's shuffle ...
    run.loader.dataset.set_epoch(epoch)  # ... and the per-sample augmentation seeds
    return run.accelerator.skip_first_batches(run.loader, skip) if skip else run.loader


def _count_step(run: RunState, result: TrainResult, batch: dict, loss_value: float) -> None:
    run.step += 1
    run.seen += run.cfg.train.batch_size * run.accelerator.num_processes
    run.skipped += batch["skipped"]
    result.losses.append((run.step, loss_value))


def _log_train(run: RunState, result: TrainResult, loss_value: float) -> None:
    """Loss, learning rate, temperature, throughput since the last log line (and each loss term's
    value, the samples skipped) to the trackers and ``train_log.jsonl``."""
    accelerator, now = run.accelerator, time.perf_counter()
    logs = {
        "train/loss": loss_value,
        "train/lr": run.scheduler.get_last_lr()[0],
        "train/logit_scale": run.core.logit_scale.exp().item(),
        "wall_s": round(now - run.t0, 3),
        "samples_per_s": round((run.seen - run.seen_at_log) / max(now - run.t_log, 1e-9), 2),
    }
    run.t_log, run.seen_at_log = now, run.seen
    if len(run.task.terms) > 1:  # each term's loss on this step's batch (this process's value)
        logs.update({f"train/loss/{name}": round(float(v), 6) for name, v in run.task.term_losses.items()})
    if run.skipping:  # samples that failed to load, all processes
        result.skipped = int(accelerator.reduce(run.skipped.clone(), reduction="sum").item())
        logs["data/skipped"] = result.skipped
    accelerator.log(logs, step=run.step)
    run.write_log({"step": run.step, **logs})


def _validate(run: RunState, result: TrainResult) -> None:
    val = validation_loss(run.accelerator, run.model, run.task, run.val_loader)
    result.val_losses.append((run.step, val))
    run.accelerator.log({"val/loss": val}, step=run.step)
    run.write_log({"step": run.step, "val/loss": val})


def _evaluate(run: RunState, result: TrainResult, hooks: EvalHooks) -> None:
    """The eval section now (``train.eval_every``); a new best ``train.best_metric`` is checkpointed
    as ``best``, apart from ``latest``."""
    step, metric = run.step, run.cfg.train.best_metric
    result.eval_metrics = hooks.evaluate(run.core, run.cfg.eval, run.accelerator)
    scores = flat_eval_metrics(result.eval_metrics)
    run.model.train()
    result.eval_history.append((step, scores))
    run.accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=step)
    run.write_log({"step": step, **{f"eval/{k}": v for k, v in scores.items()}})
    if metric:
        if metric not in scores:
            raise ConfigError(
                f"config key 'train.best_metric': '{metric}' is not an eval metric; have {sorted(scores)}"
            )
        if result.best is None or scores[metric] > result.best[1]:
            result.best = (step, scores[metric])
            _checkpoint(run, result, step, name="best", update_latest=False)


def _training_state(run: RunState, result: TrainResult, step: int) -> dict[str, Any]:
    """Besides optimizer and schedule, the run's records, so a resumed run continues them."""
    best = (
        None
        if result.best is None
        else {"step": result.best[0], "value": result.best[1], "metric": run.cfg.train.best_metric}
    )
    return {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "step": step,
        "skipped": int(run.accelerator.reduce(run.skipped.clone(), reduction="sum").item()),
        "best": best,
        **({"stream": run.loader.state_dict()} if run.streaming else {}),
    }  # every process's stream position


def _checkpoint(
    run: RunState, result: TrainResult, step: int, name: str | None = None, update_latest: bool = True
) -> Path | None:
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    path, state = None, _training_state(run, result, step)  # every process joins the skipped-count reduce
    sharded = str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED"))
    weights = accelerator.get_state_dict(run.model) if sharded else None  # gathered by every process
    if accelerator.is_main_process:
        path = save_checkpoint(
            run.out / "checkpoints",
            step,
            run.core,
            run.cfg,
            state,
            keep=run.cfg.train.keep_checkpoints,
            name=name,
            update_latest=update_latest,
            weights=weights,
        )
    accelerator.wait_for_everyone()
    return path


def _stop_on_nonfinite(run: RunState, result: TrainResult, loss: torch.Tensor, batch: dict) -> None:
    """Save the state before the failing step and stop, naming the step and the sample rows."""
    path = _checkpoint(run, result, run.step, name=f"nan-step-{run.step + 1:06d}")
    raise TrainingError(
        f"non-finite loss ({loss.item()}) at step {run.step + 1} "
        f"(sample rows {batch['index'][:8].tolist()}...); the state before "
        f"this step is saved in {path or run.out / 'checkpoints'}"
    )


def _finish(run: RunState, result: TrainResult, hooks: EvalHooks | None) -> None:
    """Throughput, the final checkpoint (unless the last step just wrote one), the final evaluation."""
    cfg, tc, step = run.cfg, run.cfg.train, run.step
    elapsed = time.perf_counter() - run.t0
    result.samples_per_s = run.seen / elapsed if elapsed > 0 else math.nan
    if step == tc.steps and not (tc.checkpoint_every and step % tc.checkpoint_every == 0):
        run.last_ckpt = _checkpoint(run, result, step)
    result.final_checkpoint = run.last_ckpt
    if cfg.eval is not None and tc.eval_at_end and step == tc.steps and hooks is not None:
        final_evaluation(cfg, run.core, run.accelerator, result, step, hooks)
    if hooks is not None and hooks.control is not None and step == tc.steps:  # and after: before / after
        hooks.control(cfg, run.core, run.accelerator, "after")
    run.accelerator.end_training()


def final_evaluation(
    cfg: Config, core: AlignModel, accelerator, result: TrainResult, step: int, hooks: EvalHooks
) -> None:
    """The eval section on the final model (reusing ``train.eval_every``'s when it just ran)."""
    if not (result.eval_history and result.eval_history[-1][0] == step):
        result.eval_metrics = hooks.evaluate(core, cfg.eval, accelerator)
    if hooks.write_reports is not None:
        hooks.write_reports(cfg, core, accelerator, result, step)
