"""GradCache (Gao et al. 2021, arXiv 2101.06983): the whole batch as negatives, towers holding
only a micro-batch of activations.

``train.micro_batch_size`` = m splits each (per-process) batch of B rows into B/m micro-batches:

1. embed every micro-batch without autograd, saving the RNG state each one started from;
2. compute the loss on the full [B, d] embeddings (with the cross-process gather, so the global
   batch is still every process's negatives) and backpropagate it to the embeddings only: the
   cached gradients dL/de, plus the temperature's and bias's own gradients;
3. re-encode each micro-batch with autograd, **its RNG state restored** (dropout, masking, any
   on-device augmentation draw the same numbers), and backpropagate ``sum(e * dL/de)``, which
   gives each tower exactly its share of the full-batch gradient.

The parameter gradients equal those of one step whose graph holds every micro-batch at once
(tests/training/test_gradcache.py: <= 1e-5 for every modality's tower, with dropout, on 1 and 2 processes).
Layers whose output depends on the batch (BatchNorm) see micro-batch statistics, as they would
with a smaller batch; their running statistics are updated once per micro-batch (the
no-autograd pass's updates are undone). The cost is one extra forward per step.

Why there is still no plain gradient accumulation: summing the gradients of B/m separate
micro-batch losses gives each row only m-1 negatives instead of B-1. It is a different (weaker)
objective, not a memory saving, so align refuses it; GradCache is what gives the large batch.

Under several processes the towers' backward runs inside ``no_sync`` and the gradients are then
averaged in one all-reduce over a flat buffer (DDP would otherwise reduce once per micro-batch,
and the temperature's gradient, which comes from the loss pass, outside any DDP forward).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from align.errors import ConfigError
from align.model.cached import CachedFeatures
from align.objectives.task import ContrastiveTask


def slice_batch(value: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of one modality's collated batch: tensors, dicts of tensors (HF
    tokenizer / feature-extractor output), PyG batches, cached features, lists."""
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    if isinstance(value, CachedFeatures):
        return CachedFeatures(value.features[start:stop])
    if isinstance(value, dict):
        return {k: slice_batch(v, start, stop) for k, v in value.items()}
    if hasattr(value, "to_data_list") and hasattr(value, "index_select"):  # torch_geometric Batch
        from torch_geometric.data import Batch

        return Batch.from_data_list(value.index_select(slice(start, stop)))
    if isinstance(value, (list, tuple)):
        return value[start:stop]
    raise TypeError(f"cannot split a batch entry of type {type(value).__name__} into micro-batches")


def batch_rows(inputs: dict[str, Any]) -> int:
    value = next(iter(inputs.values()))
    if isinstance(value, dict):
        value = next(iter(value.values()))
    return int(value.num_graphs) if hasattr(value, "num_graphs") else len(value)


def micro_spans(
    inputs: dict[str, Any], present: dict[str, torch.Tensor] | None, start: int, stop: int
) -> dict[str, tuple[int, int]]:
    """Each modality's rows of the micro-batch ``start:stop`` as a span of its collated batch: the
    same rows, or with ``data.mix`` (each modality collated from its present rows only) the span of
    its present rows among them; a modality with none there is left out."""
    if present is None:
        return {m: (start, stop) for m in inputs}
    spans = {}
    for m in inputs:
        a, b = int(present[m][:start].sum()), int(present[m][:stop].sum())
        if b > a:
            spans[m] = (a, b)
    return spans


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def cached_loss(
    accelerator, model, task: ContrastiveTask, batch: dict, micro: int
) -> tuple[torch.Tensor, Callable[[], None]]:
    """Steps 1-2 above: the full-batch loss from embeddings computed without autograd, and a
    ``backward()`` that runs steps 2-3 (call it after checking the loss is finite)."""
    if str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED")):
        raise ConfigError(
            "config key 'train.micro_batch_size': GradCache runs under DDP (or one process); "
            f"under {accelerator.distributed_type} each micro-batch's backward would reduce "
            "the gradients again. Use DDP, or leave micro_batch_size out"
        )
    inputs = task.inputs(batch)
    present = batch.get("present")  # data.mix: rows have subsets of the modalities
    rows = batch_rows(inputs) if present is None else len(batch["index"])
    if rows % micro:
        raise ValueError(f"batch of {rows} rows is not a multiple of train.micro_batch_size {micro}")
    spans = [micro_spans(inputs, present, s, s + micro) for s in range(0, rows, micro)]
    states, parts = [], []
    buffers = [b.detach().clone() for b in model.buffers()]  # BatchNorm statistics: updated in step 3 only
    with torch.no_grad():
        for span in spans:
            states.append(rng_state())
            with accelerator.autocast():
                parts.append(model({m: slice_batch(inputs[m], a, b) for m, (a, b) in span.items()}))
    after = rng_state()
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    reps = {m: torch.cat([p[m] for p in parts if m in p]).detach().requires_grad_() for m in inputs}
    with accelerator.autocast():
        loss = task.loss(reps, batch.get("label"), present=present)

    def backward() -> None:
        # the wrapper's own no_sync: Accelerate's is a no-op for a world of one, yet DDP may still wrap
        with model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext():
            accelerator.backward(loss)  # -> reps.grad, and the temperature's / bias's gradients
            for span, state in zip(spans, states):
                set_rng_state(state)
                with accelerator.autocast():
                    out = model({m: slice_batch(inputs[m], a, b) for m, (a, b) in span.items()})
                surrogate = sum(
                    (out[m] * reps[m].grad[a:b].to(out[m].dtype)).sum()
                    for m, (a, b) in span.items()
                    if reps[m].grad is not None
                )
                if isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
                    surrogate.backward()  # reps.grad already carries any fp16 loss scale
        set_rng_state(after)
        if accelerator.num_processes > 1:
            average_gradients(model)

    return loss, backward


def average_gradients(model: torch.nn.Module) -> None:
    """Mean of every parameter's gradient over the processes, in one all-reduce (what DDP does
    after a synchronised backward)."""
    import torch.distributed as dist

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
