"""Worker for tests/e2e/test_distributed.py; run it under ``torch.distributed.run``::

    python -m torch.distributed.run --nproc_per_node N --master_port P tests/support/dist_worker.py \
        --out result.pt --workdir DIR

Every rank builds the same tiny AlignModel (same seed) and the same fixed global batch of
``GLOBAL_BATCH`` samples, keeps its contiguous slice of ``GLOBAL_BATCH // N`` samples and wraps
everything the way ``align.app.trainer.train`` does (``build_accelerator``, ``param_groups`` + AdamW,
cosine schedule, ``accelerator.prepare``, ``build_loss`` with the accelerator's rank/world size).
For each loss case it then

1. runs forward + ``accelerator.backward`` once and records the all-reduced mean loss and every
   parameter's gradient (after DDP averaging);
2. clears the gradients and runs one real ``align.app.trainer.train_step`` on the same batch and
   records the updated parameters.

Rank 0 writes ``{case: {...}}`` with ``torch.save`` to ``--out``. With N=1 the whole global batch
is in one process, which is the reference the N>1 results must reproduce.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

GLOBAL_BATCH = 8
CASES = {  # name -> (loss, local_loss)
    "clip-local": ("clip", True),
    "clip-global": ("clip", False),
    "siglip": ("siglip", True),  # build_loss drops local_loss for SigLIP, as the trainer's call does
    "clip-gradcache": ("clip", True),  # train.micro_batch_size = MICRO: GradCache under the gather
}
MICRO = 2
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a standalone script: the repository root
from tests.support.tiny import TINY_MODALITIES  # noqa: E402

WORDS = (
    "a photo of the digit zero one two three four five six seven eight nine handwritten "
    "small large blurry sharp black white number"
).split()


def make_config(workdir: Path, case: str, per_process: int):
    from align.config.schema import config_from_dict

    loss, local_loss = CASES[case]
    return config_from_dict(
        {
            "output_dir": str(workdir / case),
            "seed": 0,
            "model": {"embed_dim": 16, "loss": loss, "modalities": copy.deepcopy(TINY_MODALITIES)},
            # never loaded: the worker feeds its own fixed batch; Config just requires a data section
            "data": {"train": {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}}},
            # warmup_steps 0: with warmup the cosine schedule's first lr is 0 and the step would be a no-op
            "train": {
                "batch_size": per_process,
                "steps": 10,
                "lr": 1e-3,
                "weight_decay": 0.1,
                "warmup_steps": 0,
                "grad_clip": 1.0,
                "local_loss": local_loss,
                "progress": False,
            },
        }
    )


def global_batch(preprocessors) -> dict:
    """The fixed global batch: seeded random images and captions tokenized by the model's own
    text preprocessor (its collate)."""
    g = torch.Generator().manual_seed(1234)
    images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g)
    captions = []
    for _ in range(GLOBAL_BATCH):
        n = int(torch.randint(2, 7, (), generator=g))
        idx = torch.randint(len(WORDS), (n,), generator=g).tolist()
        captions.append(" ".join(WORDS[i] for i in idx))
    text_pre = preprocessors["text"]
    tokens = text_pre.collate([text_pre(c, train=False) for c in captions])
    return {"image": images, "text": tokens, "captions": captions}


def run_case(case: str, workdir: Path) -> dict | None:
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from align.model.align_model import AlignModel, contrastive_loss
    from align.objectives.factory import build_loss
    from align.training.engine import build_accelerator, param_groups
    from align.training.loop import train_step

    world = int(os.environ.get("WORLD_SIZE", "1"))
    assert GLOBAL_BATCH % world == 0, (GLOBAL_BATCH, world)
    per_process = GLOBAL_BATCH // world
    cfg = make_config(workdir, case, per_process)
    tc = cfg.train

    # --- exactly the trainer's wiring (align.app.trainer.train), minus the data loader -------------
    accelerator = build_accelerator(cfg)
    assert accelerator.num_processes == world, (accelerator.num_processes, world)
    set_seed(cfg.seed)
    model = AlignModel(cfg.model)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tc.betas, eps=tc.eps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, tc.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    core = accelerator.unwrap_model(model)
    loss_fn = build_loss(
        cfg.model.loss, local_loss=tc.local_loss, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    pairs = cfg.loss_pairs()
    modalities = list(cfg.data.train.columns)
    model.train()

    full = global_batch(core.preprocessors())
    rank = accelerator.process_index
    lo, hi = rank * per_process, (rank + 1) * per_process
    batch = {m: full[m][lo:hi] for m in modalities}

    # --- 1. one forward/backward: loss and DDP-averaged gradients ------------------------------
    micro = MICRO if case == "clip-gradcache" else None
    if micro:  # GradCache: no-autograd pass, loss, re-encode each micro-batch, one all-reduce
        from align.objectives.task import ContrastiveTask
        from align.training.gradcache import cached_loss

        loss, backward = cached_loss(
            accelerator, model, ContrastiveTask(core, loss_fn, pairs, modalities), batch, micro
        )
        backward()
    else:
        embeddings = model(batch)
        loss = contrastive_loss(core, embeddings, pairs, loss_fn)
        accelerator.backward(loss)
    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
    names = [n for n, p in core.named_parameters() if p.requires_grad]
    grads = {
        n: (p.grad.detach().clone() if p.grad is not None else None)
        for n, p in core.named_parameters()
        if p.requires_grad
    }
    # one number per parameter from every rank, to check DDP really synchronised the gradients
    grad_sums = torch.stack(
        [
            grads[n].double().sum() if grads[n] is not None else torch.tensor(float("nan"), dtype=torch.float64)
            for n in names
        ]
    )
    all_grad_sums = accelerator.gather(grad_sums.unsqueeze(0))
    optimizer.zero_grad(set_to_none=True)

    # --- 2. one real optimizer step through the trainer's train_step ----------------------------
    before = {n: p.detach().clone() for n, p in core.named_parameters()}

    def nonfinite(bad_loss, _batch):
        raise RuntimeError(f"rank {rank}: non-finite loss {bad_loss.item()} in case {case}")

    from align.objectives.task import ContrastiveTask

    task = ContrastiveTask(core, loss_fn, pairs, modalities, micro_batch_size=micro)
    step_loss = train_step(accelerator, model, task, batch, optimizer, scheduler, tc.grad_clip, on_nonfinite=nonfinite)
    step_loss = accelerator.reduce(step_loss.detach(), reduction="mean")
    after = {n: p.detach().clone() for n, p in core.named_parameters()}

    result = {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "wrapper": type(model).__name__,
        "local_batch": batch["image"].shape[0],
        "loss": mean_loss.cpu(),
        "local_loss_value": loss.detach().cpu(),
        "grads": grads,
        "param_names": names,
        "rank_grad_sums": all_grad_sums.cpu(),
        "step_loss": step_loss.cpu(),
        "params_before": before,
        "params_after": after,
        "lr_after": scheduler.get_last_lr()[0],
    }
    accelerator.wait_for_everyone()
    return result if accelerator.is_main_process else None


def probe_without_cpu_flag(workdir: Path) -> int:
    """num_processes that ``build_accelerator`` reports when ACCELERATE_USE_CPU is *not* set (the
    plain ``torchrun`` launch). Runs after the real cases: it resets Accelerate's shared state."""
    from accelerate.state import AcceleratorState, GradientState

    from align.training.engine import build_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    os.environ.pop("ACCELERATE_USE_CPU", None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = build_accelerator(make_config(workdir, "clip-local", GLOBAL_BATCH // world))
    return accelerator.num_processes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="torch.save target (written by rank 0)")
    parser.add_argument("--workdir", required=True, help="scratch folder for the accelerator's output_dir")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--probe", action="store_true", help="also record probe_without_cpu_flag()")
    args = parser.parse_args()
    # Deliberately no ACCELERATE_USE_CPU: build_accelerator must shard a plain torchrun launch
    # on a machine without GPUs by itself (Accelerate otherwise runs each rank as a world of one).
    os.environ.pop("ACCELERATE_USE_CPU", None)
    torch.set_num_threads(1)
    results: dict = {case: run_case(case, Path(args.workdir)) for case in args.cases}
    if args.probe:
        results["probe_num_processes_without_cpu_flag"] = probe_without_cpu_flag(Path(args.workdir))
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    main()
