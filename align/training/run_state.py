"""What one training run carries from its setup to its last step (``RunState``), and the setup that
builds it, in the order it runs: seed -> data and model -> optimizer and schedule -> the checkpoint's
state on resume -> Accelerate's prepare -> the run's records (config, trackers, log).

``align.training.loop`` takes it from there. The order is part of the contract: setup (dataset
fingerprints, trackers) may consume global RNGs, so a resumed run sets the checkpoint's RNG state
after ``prepare``, and a fresh run re-seeds right before its first batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from align.config.schema import Config, dump_config
from align.data.mixture import mixture_columns
from align.data.streaming import head_table
from align.data.summary import look_at_data
from align.data.tables import load_table
from align.model.align_model import AlignModel, fit_adapters
from align.model.checkpoint import set_rng_state
from align.model.locking import trainable_report
from align.objectives.task import ContrastiveTask
from align.training.engine import build_loader, build_mixture_loader, build_optimizer
from align.training.feature_cache import build_feature_caches
from align.training.resume import restore_newest_good, trim_log


@dataclass
class RunState:
    """The run's parts (as Accelerate prepared them) and its counters, which the loop's steps advance."""

    cfg: Config
    accelerator: Any
    model: torch.nn.Module  # what Accelerate prepared (maybe DDP-wrapped or compiled): train and validate on it
    core: AlignModel  # the bare model: checkpoints, evaluation, the logged temperature
    task: ContrastiveTask
    optimizer: Any
    scheduler: Any
    loader: Any
    val_loader: Any | None
    streaming: bool  # the training set is streamed: the loader keeps its own epoch and position
    restored: dict[str, Any] | None = None  # the checkpoint's training state, when resuming
    start: int = 0  # the step the run starts from (the checkpoint's on resume)
    skipped_before: int = 0  # samples skipped before the checkpoint
    step: int = 0
    end: int = 0  # the step this process stops after (``train.steps``, or ``stop_at``)
    steps_per_epoch: int | None = None  # None when streaming
    skipping: bool = False  # some training set replaces samples that fail to load (``on_error: skip``)
    last_ckpt: Path | None = None
    skipped: torch.Tensor | None = None  # samples this process skipped (the resumed count on the main process)
    seen: int = 0  # samples trained on, all processes
    t0: float = 0.0
    t_log: float = 0.0
    seen_at_log: int = 0

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"

    @property
    def resuming(self) -> bool:
        return self.restored is not None

    def write_log(self, record: dict[str, Any]) -> None:
        """One line of ``train_log.jsonl`` (the main process writes it)."""
        if self.accelerator.is_main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def start_run(cfg: Config, accelerator, resume: bool) -> RunState:
    """Seed, data, model, optimizer and schedule, the newest good checkpoint when resuming, all
    prepared by Accelerate; the RNGs set to the checkpoint's state on resume."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    set_seed(cfg.seed)
    model, loader, val_loader, caches, streaming = _data_and_model(cfg, accelerator)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.train.warmup_steps, cfg.train.steps)
    restored = _restore(cfg, accelerator, model, optimizer, scheduler, loader, streaming) if resume else None
    model, optimizer, loader, scheduler, val_loader = _prepare(
        cfg, accelerator, model, optimizer, loader, scheduler, val_loader
    )
    if restored is not None:
        set_rng_state(restored["rng"])
    core: AlignModel = accelerator.unwrap_model(model)
    if hasattr(core, "_orig_mod"):
        core = core._orig_mod
    task = ContrastiveTask.from_config(cfg, core, rank=accelerator.process_index, world_size=accelerator.num_processes)
    task.feature_caches = caches
    run = RunState(
        cfg=cfg,
        accelerator=accelerator,
        model=model,
        core=core,
        task=task,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        val_loader=val_loader,
        streaming=streaming,
        restored=restored,
    )
    if restored is not None:
        run.start, run.skipped_before = int(restored["step"]), int(restored.get("skipped", 0))
    return run


def _data_and_model(cfg: Config, accelerator) -> tuple[AlignModel, Any, Any | None, dict, bool]:
    """The training tables, the adapters fitted on them (before the model exists), the model, the
    frozen towers' feature caches and the loaders; then the look at the data before training."""
    if cfg.data.mix is not None:  # several training sets, each with its modalities (align/data/mixture.py)
        streaming, caches = False, {}
        tables = {key: load_table(spec, key) for key, spec, _ in cfg.data.train_parts()}
        fitted = fit_adapters(cfg.model, *mixture_columns(cfg, tables))
        model = _new_model(cfg, accelerator)
        loader = build_mixture_loader(cfg, model, tables)
    else:
        streaming = cfg.data.train.streaming  # fit_adapters and the look before training see the stream's head
        train_table = (head_table if streaming else load_table)(cfg.data.train, "data.train")
        fitted = fit_adapters(cfg.model, cfg.data.train.columns, train_table)  # before the model exists
        model = _new_model(cfg, accelerator)
        caches = (
            {} if streaming else build_feature_caches(cfg, model, train_table, accelerator.device, accelerator.print)
        )
        loader = build_loader(
            cfg, model, cfg.data.train, "data.train", train=True, table=train_table, cached=set(caches)
        )
    val_loader = build_loader(cfg, model, cfg.data.val, "data.val", train=False) if cfg.data.val else None
    look_at_data(cfg, accelerator, loader, val_loader, fitted)
    return model, loader, val_loader, caches, streaming


def _new_model(cfg: Config, accelerator) -> AlignModel:
    """The run's model, its towers from ``model.init_from`` where given (before the frozen towers'
    features are cached: they are keyed by the weights); prints what was loaded and what trains."""
    model = AlignModel(cfg.model)
    if cfg.model.init_from is not None:
        from align.model.init_from import describe, init_from_checkpoint

        accelerator.print(describe(init_from_checkpoint(model, cfg.model.init_from)))
    accelerator.print(trainable_report(model))
    return model


def _restore(
    cfg: Config, accelerator, model: AlignModel, optimizer, scheduler, loader, streaming: bool
) -> dict[str, Any]:
    """The newest checkpoint that verifies (damaged newer ones are skipped, named) into the model,
    optimizer, schedule and stream position; returns its training state."""
    ckpt, state = restore_newest_good(Path(cfg.output_dir) / "checkpoints", model, accelerator.print)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if streaming:  # where each process and worker was in the stream
        loader.load_state_dict(state.get("stream"))
    accelerator.print(f"resumed from {ckpt} at step {int(state['step'])}")
    return state


def _prepare(cfg: Config, accelerator, model, optimizer, loader, scheduler, val_loader) -> tuple:
    """Gradient checkpointing and ``torch.compile`` as configured, then Accelerate's prepare."""
    if cfg.train.grad_checkpointing:
        accelerator.print(f"gradient checkpointing: {model.set_grad_checkpointing()}")
    if cfg.train.compile:
        model = torch.compile(model)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    return model, optimizer, loader, scheduler, val_loader


def open_records(run: RunState) -> None:
    """``config.yaml``, the trackers and the log; on resume, TensorBoard drops the killed run's events
    past the checkpoint and the log its lines past it."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        dump_config(run.cfg, run.out / "config.yaml")
    accelerator.init_trackers(
        "tensorboard", init_kwargs={"tensorboard": {"purge_step": run.start + 1}} if run.resuming else {}
    )
    if accelerator.is_main_process and not run.resuming and run.log_path.exists():
        run.log_path.unlink()
    elif accelerator.is_main_process and run.resuming:
        trim_log(run.log_path, run.start)
