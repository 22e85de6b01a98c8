"""What a training run is built from: the Accelerator, the optimizer and the data loaders.

``align.training.loop`` holds the loop; these are its parts, kept apart so the loop reads as one screen.
Engines: Accelerate decides from how the run was launched (``accelerate launch --config_file
configs/accelerate/{fsdp,deepspeed}.yaml``) whether the model is wrapped in DDP, sharded by FSDP2
or handed to DeepSpeed. Accelerate only shards on accelerators: on CPU it sets FSDP / DeepSpeed
only on top of a multi-GPU-like distributed type (``accelerate/state.py``), so a CPU launch with
those configs runs plain DDP; ``build_accelerator`` says so instead of letting it pass silently.
"""

from __future__ import annotations

import os

import torch

from align.config.objectives import needs_labels
from align.config.schema import Config
from align.data.mixture import MixedDataset, MixtureSampler
from align.data.streaming import streaming_loader
from align.data.tables import Collator, PairedDataset, load_table
from align.errors import ConfigError
from align.model.align_model import AlignModel
from align.training.runlock import make_run_dir


def _no_decay(name: str, p: torch.nn.Parameter) -> bool:
    return p.ndim < 2 or "logit_" in name or ".ln" in name or "norm" in name or name.endswith(".bias")


def lr_scales(model: torch.nn.Module, lr: float, tower_lr: dict[str, float] | None, layer_decay: float | None) -> dict:
    """Parameter name -> its learning rate: ``tower_lr[m]`` for tower ``m`` and its head (else ``lr``),
    times ``layer_decay ** (G - 1 - g)`` for a tower parameter in group ``g`` of the tower's ``G``
    (``align.model.locking.parameter_groups``: before the blocks, each block, after them), so the
    last group trains at the tower's rate and each group before it at ``layer_decay`` times the next
    (BEiT / ELECTRA's layer-wise decay). Heads and the temperature are not decayed."""
    from align.model.locking import parameter_groups

    adapters = getattr(model, "adapters", {})
    for mod in tower_lr or {}:
        if mod not in adapters:
            raise ConfigError(f"config key 'train.tower_lr.{mod}': the model has no tower '{mod}' ({list(adapters)})")
    out: dict[str, float] = {}
    for mod in adapters:
        base = (tower_lr or {}).get(mod, lr)
        groups = parameter_groups(adapters[mod]) if layer_decay is not None else [[]]
        for g, names in enumerate(groups):
            for n in names:
                out[f"adapters.{mod}.{n}"] = base * layer_decay ** (len(groups) - 1 - g)
        for n, _ in model.heads[mod].named_parameters():
            out[f"heads.{mod}.{n}"] = base
        for n, _ in adapters[mod].named_parameters():
            out.setdefault(f"adapters.{mod}.{n}", base)
    return out


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    lr: float | None = None,
    tower_lr: dict[str, float] | None = None,
    layer_decay: float | None = None,
) -> list[dict]:
    """open_clip's rule: no weight decay on biases, norms, embeddings-like 1-d params and the temperature;
    with ``lr``, one group per (learning rate, decay) pair as ``lr_scales`` gives them."""
    rates = lr_scales(model, lr, tower_lr, layer_decay) if lr is not None else {}
    groups: dict[tuple[float | None, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((rates.get(name, lr), _no_decay(name, p)), []).append(p)
    for rate in {r for r, _ in groups} or {lr}:  # both kinds for every rate, empty or not: resumed
        for kind in (True, False):  # optimizer states keep their group layout (open_clip's two groups)
            groups.setdefault((rate, kind), [])
    out = []
    for (rate, no_decay), params in sorted(groups.items(), key=lambda kv: (kv[0][1] is False, -(kv[0][0] or 0))):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if rate is not None:
            group["lr"] = rate
        out.append(group)
    return out


def build_optimizer(model: torch.nn.Module, tc) -> torch.optim.Optimizer:
    """AdamW with open_clip's decay split, per-tower rates and layer-wise decay (``train.tower_lr``,
    ``train.layer_decay``); the fused kernel (CPU and CUDA) saves ~4% of a CPU step."""
    groups = param_groups(model, tc.weight_decay, tc.lr, tc.tower_lr, tc.layer_decay)
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, eps=tc.eps, fused=True)


def build_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    make_run_dir(cfg.output_dir)  # an unwritable output_dir is named here, before anything loads
    # Accelerate keeps one process-wide state; a second run in the same process (a notebook, the
    # tests) with another mixed-precision setting must start from a clean one. The distributed
    # part (PartialState, the process group) is kept.
    AcceleratorState._reset_state()
    engine = next(
        (e for e in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{e}", "").lower() == "true"), None
    )
    if engine and not torch.cuda.is_available():
        print(
            f"note: launched with {engine} but this machine has no GPU; Accelerate shards only on "
            "accelerators, so this CPU run uses plain data parallelism (DDP)"
        )
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # else CPU-only multi-process runs silently don't shard
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard",
        project_dir=cfg.output_dir,
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, any world size
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def leave_cores_for_workers(num_workers: int, num_processes: int) -> int | None:
    """On CPU, DataLoader workers and the training process's OpenMP threads share the cores; when
    they oversubscribe them, OpenMP's spin-waits make every op several times slower (measured: an
    FSDD run went from 0.3 to 0.7 s/step). Give the trainer the cores the workers leave, unless
    OMP_NUM_THREADS says otherwise. Returns the previous thread count (to restore), or None."""
    if num_workers == 0 or torch.cuda.is_available() or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, cores // max(num_processes, 1) - num_workers)))
    return previous


def one_thread_per_worker(_worker_id: int) -> None:
    """DataLoader workers run torch with one thread, but numpy's BLAS (the mel filter bank, ...)
    would still start one thread per core in every worker and oversubscribe the machine."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def build_loader(
    cfg: Config, model: AlignModel, spec, key: str, train: bool, table=None, cached: set[str] = frozenset()
) -> torch.utils.data.DataLoader:
    """Shuffled, augmented batches for training; fixed order and eval preprocessing for validation.
    Both drop the last partial batch: a contrastive batch must be full on every process. Modalities
    in ``cached`` (frozen towers whose features are cached) are left out: the batch's row index
    is all they need. With ``data.mix`` batches carry ``present`` masks (``Collator``)."""
    if spec.streaming:  # align/data/streaming.py: sharded over processes and workers, resumed by position
        return streaming_loader(cfg, model.preprocessors(), spec, key, table, worker_init_fn=one_thread_per_worker)
    ds = paired_dataset(cfg, model, spec, key, train, table, cached)
    gen = torch.Generator().manual_seed(cfg.seed)
    return data_loader(cfg, ds, ds.preprocessors, shuffle=train, generator=gen)


def build_mixture_loader(cfg: Config, model: AlignModel, tables: dict[str, object]) -> torch.utils.data.DataLoader:
    """``data.mix``: every training set's rows in one loader, drawn by weight (``align.data.mixture``)."""
    parts = cfg.data.train_parts()
    ds = MixedDataset(
        [paired_dataset(cfg, model, spec, key, True, tables[key], check_size=False) for key, spec, _ in parts]
    )
    if len(ds) < cfg.train.batch_size:
        raise ConfigError(
            f"config key 'train.batch_size': {cfg.train.batch_size} is larger than data.mix's "
            f"{len(ds)} rows; batches must be full"
        )
    sampler = MixtureSampler([len(p) for p in ds.parts], [w for _, _, w in parts], seed=cfg.seed)
    pre = {m: p for m, p in model.preprocessors().items() if m in cfg.data.train_modalities()}
    return data_loader(cfg, ds, pre, sampler=sampler)


def paired_dataset(
    cfg: Config,
    model: AlignModel,
    spec,
    key: str,
    train: bool,
    table=None,
    cached: set[str] = frozenset(),
    check_size: bool = True,
) -> PairedDataset:
    table = load_table(spec, key) if table is None else table
    columns = {m: c for m, c in spec.columns.items() if m not in cached}
    pre = {m: p for m, p in model.preprocessors().items() if m in columns}
    labels = spec.label_column if needs_labels(cfg) else None  # label-based losses (multi-positive)
    ds = PairedDataset(
        table,
        columns,
        pre,
        train=train,
        label_column=labels,
        name=f"{key} ({spec.source})",
        seed=cfg.seed,
        on_error=spec.on_error,
        refill=True,
        cache_samples=train and cfg.data.cache_samples,
    )
    if check_size and len(ds) < cfg.train.batch_size:
        raise ConfigError(
            f"config key 'train.batch_size': {cfg.train.batch_size} is larger than {key} "
            f"({len(ds)} rows); batches must be full"
        )
    return ds


def data_loader(cfg: Config, ds, pre: dict, **kwargs) -> torch.utils.data.DataLoader:
    memo = any(getattr(p, "memo", None) is not None for p in getattr(ds, "parts", [ds]))
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=Collator(pre, masks=cfg.data.mix is not None),
        worker_init_fn=one_thread_per_worker,
        persistent_workers=memo and cfg.data.num_workers > 0,
        **kwargs,
    )
