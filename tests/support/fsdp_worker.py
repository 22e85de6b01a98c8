"""Worker for tests/training/test_engine.py, run under ``torch.distributed.run`` (gloo, CPU)::

    python -m torch.distributed.run --nproc_per_node N tests/support/fsdp_worker.py --out result.pt

Builds the tiny image<->text AlignModel (same seed on every rank), shards it with PyTorch's FSDP2
(``fully_shard`` on each tower, each head and the root, as Accelerate's FSDP2 plugin does on GPUs)
when N > 1, and takes one real ``align.training.loop.train_step`` (CLIP loss with the cross-process
gather, gradient clipping, AdamW) on this rank's slice of a fixed global batch of digits. Rank 0
saves the full (gathered) parameters after the step; with N = 1 nothing is sharded, which is the
reference. Accelerate itself only shards on GPUs (see docs/ARCHITECTURE.md, "Engines"), so the
model is sharded here with torch directly.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch

GLOBAL_BATCH = 8
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a standalone script: the repository root
from tests.support.tiny import TINY_MODALITIES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from sklearn.datasets import load_digits

    from align.config.schema import ModelConfig
    from align.model.align_model import AlignModel
    from align.objectives.factory import build_loss
    from align.objectives.task import ContrastiveTask
    from align.training.engine import param_groups
    from align.training.loop import train_step

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=True)  # the process group (gloo); the model is sharded below
    rank = accelerator.process_index
    torch.manual_seed(0)
    model = AlignModel(ModelConfig(embed_dim=16, modalities=copy.deepcopy(TINY_MODALITIES)))
    pre = model.preprocessors()
    digits = load_digits()
    images = [np.stack([(im * 16).astype(np.uint8)] * 3, -1) for im in digits.images[:GLOBAL_BATCH]]
    captions = [f"a handwritten {int(t)}" for t in digits.target[:GLOBAL_BATCH]]
    lo, hi = rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world
    batch = {
        "image": pre["image"].collate([pre["image"](im, train=False) for im in images[lo:hi]]),
        "text": pre["text"].collate([pre["text"](c, train=False) for c in captions[lo:hi]]),
        "index": torch.arange(lo, hi),
    }
    sharded = world > 1
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for part in [*model.adapters.values(), *model.heads.values()]:
            fully_shard(part, mesh=mesh)
        fully_shard(model, mesh=mesh)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    task = ContrastiveTask(
        model, build_loss("clip", rank=rank, world_size=world), [("image", "text")], ["image", "text"]
    )
    loss = train_step(accelerator, model, task, batch, optimizer, None, grad_clip=1.0)
    params = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }
    kind = type(next(model.parameters())).__name__
    if rank == 0:
        torch.save({"loss": loss, "params": params, "param_type": kind, "world": world}, args.out)
    accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
