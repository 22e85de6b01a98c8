"""How a process's streamed batches are ordered and kept in lockstep with the other processes
(``align/data/streaming.py``): the workers' batches in a fixed order, and the one-number collectives
that end an epoch on every process together and gather the resume state."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch


def round_robin(batches, workers: int, first: int = 0) -> Iterator[dict]:
    """The workers' batches in a fixed order, whatever order they arrive in: turns go round the
    workers from ``first``; a finished worker's turns are skipped."""
    pending, done, turn = [deque() for _ in range(workers)], [False] * workers, first % workers
    for batch in batches:
        pending[batch["worker"]].append(batch)
        while not all(done):
            if done[turn]:
                turn = (turn + 1) % workers
            elif not pending[turn]:
                break  # wait for this worker's next batch
            elif pending[turn][0].get("end"):
                pending[turn].popleft()
                done[turn] = True
            else:
                yield pending[turn].popleft()
                turn = (turn + 1) % workers


def all_processes(flag: bool, device=None) -> bool:
    """Whether ``flag`` holds on every process (one all-reduced number; ``flag`` itself when not
    distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather(obj: Any) -> list[Any]:
    """``obj`` from every process (a list of one when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
