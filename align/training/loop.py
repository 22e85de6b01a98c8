"""Training on Accelerate: one process or many, CPU or GPU, same code.

The step is: encode each modality -> gather features across processes with gradients -> loss
over the configured modality pairs -> backward -> clip -> AdamW -> cosine schedule -> clamp the
temperature. There is deliberately no plain gradient accumulation: for a contrastive loss it
would silently shrink the set of negatives.
"""
from __future__ import annotations

from align.errors import AlignError

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from align.model.checkpoint import save_checkpoint, set_rng_state
from align.config.schema import Config, dump_config
from align.errors import ConfigError
from align.data.tables import hf_progress, load_table
from align.data.summary import look_at_data
from align.training.engine import (build_accelerator, build_loader, build_mixture_loader, build_optimizer,
                          leave_cores_for_workers)
from align.training.feature_cache import build_feature_caches
from align.training.gradcache import cached_loss
from align.data.mixture import mixture_columns
from align.model.align_model import AlignModel, fit_adapters
from align.objectives.task import ContrastiveTask
from align.training.resume import clean_leftovers, restore_newest_good, restored_best, set_aside_previous_run, trim_log
from align.training.runlock import lock_run
from align.data.streaming import head_table


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


def flat_eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar eval metrics as 'zeroshot/top1', 'retrieval/image_to_text/R@1', ... (for logs and
    ``train.best_metric``)."""
    out = {}
    for section in ("zeroshot", "retrieval"):
        for key, value in (metrics.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                    (key in ("top1", "top5", "mean_per_class_recall") or "/" in key):
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


def train_step(accelerator, model, task: ContrastiveTask, batch: dict, optimizer, scheduler,
               grad_clip: float | None = None, on_nonfinite=None) -> torch.Tensor:
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


def run_training(cfg: Config, resume: bool = False, stop_at: int | None = None,
                 hooks: EvalHooks | None = None) -> TrainResult:
    """Run training as configured. ``stop_at`` ends the run early after that step (used to
    simulate an interrupted run); ``resume`` continues from ``output_dir/checkpoints/latest``.
    ``hooks`` evaluate during and after training (``align.app.trainer.train`` passes align.eval's);
    without them ``train.eval_every`` is refused and the final evaluation is left to the caller."""
    if hooks is None and cfg.train.eval_every:
        raise ConfigError("config key 'train.eval_every': evaluating during training needs the eval "
                          "hooks: call align.app.trainer.train")
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
                accelerator.print(f"moved the checkpoints of an earlier run in {cfg.output_dir} to {moved} "
                                  "(a fresh run; pass --resume to continue one)")
        accelerator.wait_for_everyone()
        return _run(cfg, accelerator, resume, stop_at, hooks)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Config, accelerator, resume: bool, stop_at: int | None, hooks: EvalHooks | None) -> TrainResult:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    tc = cfg.train
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if cfg.data.mix is not None:  # several training sets, each with its modalities (align/data/mixture.py)
        streaming, caches = False, {}
        tables = {key: load_table(spec, key) for key, spec, _ in cfg.data.train_parts()}
        fitted = fit_adapters(cfg.model, *mixture_columns(cfg, tables))
        model = AlignModel(cfg.model)
        loader = build_mixture_loader(cfg, model, tables)
    else:
        streaming = cfg.data.train.streaming  # fit_adapters and the look before training see the stream's head
        train_table = (head_table if streaming else load_table)(cfg.data.train, "data.train")
        fitted = fit_adapters(cfg.model, cfg.data.train.columns, train_table)  # before the model exists
        model = AlignModel(cfg.model)
        caches = {} if streaming else build_feature_caches(cfg, model, train_table, accelerator.device,
                                                           accelerator.print)
        loader = build_loader(cfg, model, cfg.data.train, "data.train", train=True, table=train_table,
                              cached=set(caches))
    val_loader = build_loader(cfg, model, cfg.data.val, "data.val", train=False) if cfg.data.val else None
    look_at_data(cfg, accelerator, loader, val_loader, fitted)
    optimizer = build_optimizer(model, tc)
    scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, tc.steps)
    start, skipped_before, log_path = 0, 0, out / "train_log.jsonl"
    if resume:  # the newest checkpoint that verifies; damaged newer ones are skipped, named
        ckpt, state = restore_newest_good(out / "checkpoints", model, accelerator.print)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, skipped_before = int(state["step"]), int(state.get("skipped", 0))
        if streaming:  # where each process and worker was in the stream
            loader.load_state_dict(state.get("stream"))
        accelerator.print(f"resumed from {ckpt} at step {start}")
    if tc.grad_checkpointing:
        accelerator.print(f"gradient checkpointing: {model.set_grad_checkpointing()}")
    if tc.compile:
        model = torch.compile(model)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    # Setup (datasets fingerprints, trackers) may consume global RNGs; fix them right before the
    # first batch so a run, and a resumed run, draw the same augmentations and captions.
    if resume:
        set_rng_state(state["rng"])
    core: AlignModel = accelerator.unwrap_model(model)
    if hasattr(core, "_orig_mod"):
        core = core._orig_mod
    task = ContrastiveTask.from_config(cfg, core, rank=accelerator.process_index,
                                       world_size=accelerator.num_processes)
    task.feature_caches = caches
    if accelerator.is_main_process:
        dump_config(cfg, out / "config.yaml")
    # on resume, TensorBoard drops the killed run's events past the checkpoint, as the log does
    accelerator.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": start + 1}} if resume else {})
    if accelerator.is_main_process and not resume and log_path.exists():
        log_path.unlink()
    elif accelerator.is_main_process and resume:  # the killed run's lines past the checkpoint
        trim_log(log_path, start)

    def training_state(step: int) -> dict[str, Any]:
        """Besides optimizer and schedule, the run's records, so a resumed run continues them."""
        best = None if result.best is None else {"step": result.best[0], "value": result.best[1],
                                                  "metric": tc.best_metric}
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "skipped": int(accelerator.reduce(skipped.clone(), reduction="sum").item()), "best": best,
                **({"stream": loader.state_dict()} if streaming else {})}  # every process's stream position

    def checkpoint(step: int, name: str | None = None, update_latest: bool = True) -> Path | None:
        accelerator.wait_for_everyone()
        path, state = None, training_state(step)  # every process joins the skipped-count reduce
        sharded = str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED"))
        weights = accelerator.get_state_dict(model) if sharded else None  # gathered by every process
        if accelerator.is_main_process:
            path = save_checkpoint(out / "checkpoints", step, core, cfg, state, keep=tc.keep_checkpoints,
                                   name=name, update_latest=update_latest, weights=weights)
        accelerator.wait_for_everyone()
        return path

    result = TrainResult(model=core, output_dir=out, is_main_process=accelerator.is_main_process,
                         skipped=skipped_before)
    if resume:
        result.best = restored_best(state, out / "checkpoints", log_path, tc.best_metric, start)
    steps_per_epoch = None if streaming else len(loader)
    skipping = any(spec.on_error == "skip" for _, spec, _ in cfg.data.train_parts())
    step = start
    last_ckpt = None
    end = min(tc.steps, stop_at) if stop_at else tc.steps
    bar = tqdm(total=tc.steps, initial=start, disable=not (tc.progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    model.train()
    if not resume:
        set_seed(cfg.seed)
    t0, seen = time.perf_counter(), 0
    t_log, seen_at_log = t0, 0
    # counted per process and summed when logged: the resumed count goes to the main process only
    skipped = torch.tensor(skipped_before if accelerator.is_main_process else 0, device=accelerator.device)

    def nonfinite(loss: torch.Tensor, batch: dict) -> None:
        path = checkpoint(step, name=f"nan-step-{step + 1:06d}")
        raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1} "
                            f"(sample rows {batch['index'][:8].tolist()}...); the state before "
                            f"this step is saved in {path or out / 'checkpoints'}")

    while step < end:
        if streaming:  # the stream keeps its own epoch and position
            epoch_loader = loader.epoch_batches(accelerator.device)
        else:
            epoch, skip = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch)  # the sampler's shuffle ...
            loader.dataset.set_epoch(epoch)  # ... and the per-sample augmentation seeds
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in epoch_loader:
            loss_value = train_step(accelerator, model, task, batch, optimizer, scheduler, tc.grad_clip,
                                    on_nonfinite=nonfinite).item()
            step += 1
            seen += tc.batch_size * accelerator.num_processes
            skipped += batch["skipped"]
            result.losses.append((step, loss_value))
            bar.update(1)
            if step % tc.log_every == 0 or step == end:
                now = time.perf_counter()
                logs = {"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0],
                        "train/logit_scale": core.logit_scale.exp().item(), "wall_s": round(now - t0, 3),
                        "samples_per_s": round((seen - seen_at_log) / max(now - t_log, 1e-9), 2)}
                t_log, seen_at_log = now, seen
                if len(task.terms) > 1:  # each term's loss on this step's batch (this process's value)
                    logs.update({f"train/loss/{name}": round(float(v), 6) for name, v in task.term_losses.items()})
                if skipping:  # samples that failed to load, all processes
                    result.skipped = int(accelerator.reduce(skipped.clone(), reduction="sum").item())
                    logs["data/skipped"] = result.skipped
                accelerator.log(logs, step=step)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps({"step": step, **logs}) + "\n")
            if val_loader is not None and ((tc.val_every and step % tc.val_every == 0) or step == tc.steps):
                val = validation_loss(accelerator, model, task, val_loader)
                result.val_losses.append((step, val))
                accelerator.log({"val/loss": val}, step=step)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps({"step": step, "val/loss": val}) + "\n")
            if tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps):
                result.eval_metrics = hooks.evaluate(core, cfg.eval, accelerator)
                scores = flat_eval_metrics(result.eval_metrics)
                model.train()
                result.eval_history.append((step, scores))
                accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=step)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in scores.items()}}) + "\n")
                if tc.best_metric:
                    if tc.best_metric not in scores:
                        raise ConfigError(f"config key 'train.best_metric': '{tc.best_metric}' is not an eval "
                                         f"metric; have {sorted(scores)}")
                    if result.best is None or scores[tc.best_metric] > result.best[1]:
                        result.best = (step, scores[tc.best_metric])
                        checkpoint(step, name="best", update_latest=False)
            if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                last_ckpt = checkpoint(step)
            if step >= end:
                break
    bar.close()
    elapsed = time.perf_counter() - t0
    result.samples_per_s = seen / elapsed if elapsed > 0 else math.nan
    if step == tc.steps and not (tc.checkpoint_every and step % tc.checkpoint_every == 0):
        last_ckpt = checkpoint(step)
    result.final_checkpoint = last_ckpt
    if cfg.eval is not None and tc.eval_at_end and step == tc.steps and hooks is not None:
        final_evaluation(cfg, core, accelerator, result, step, hooks)
    accelerator.end_training()
    return result


def final_evaluation(cfg: Config, core: AlignModel, accelerator, result: TrainResult, step: int,
                     hooks: EvalHooks) -> None:
    """The eval section on the final model (reusing ``train.eval_every``'s when it just ran)."""
    if not (result.eval_history and result.eval_history[-1][0] == step):
        result.eval_metrics = hooks.evaluate(core, cfg.eval, accelerator)
    if hooks.write_reports is not None:
        hooks.write_reports(cfg, core, accelerator, result, step)
