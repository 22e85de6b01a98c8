"""Momentum towers and a queue of their past embeddings (MoCo v2 / ALBEF's image-text contrastive
part): many more negatives than a small batch holds, and optionally ALBEF's momentum distillation.

``model.momentum: {queue_size: 4096, momentum: 0.995, distill: 0.4}`` gives the model an exponential
moving average copy of every tower and head (``MomentumTowers``, no gradients) and, per modality, a
queue of the last ``queue_size`` momentum embeddings. For each aligned pair (a, b), with
``s = exp(logit_scale)``, this batch's embeddings ``a_i``, ``b_i``, the momentum ones ``a'_i``, ``b'_i`` and
the queues ``Q_a``, ``Q_b`` (Li et al. 2021, ALBEF, arXiv 2107.07651, Eq. 1-2 and 5):

    p_i(a->b) = softmax_j( s * a_i . [b'; Q_b]_j )      (B + queue_size candidates)
    y_i(a->b) = (1 - alpha) * onehot(i) + alpha * softmax_j( s * a'_i . [b'; Q_b]_j )
    L = 1/2 * mean_i [ H(y_i(a->b), p_i(a->b)) + H(y_i(b->a), p_i(b->a)) ]

with ``alpha = distill`` (0: plain MoCo-style InfoNCE against the momentum keys and the queue).
After every optimizer step the momentum parameters move ``theta' <- m theta' + (1 - m) theta`` and this
step's momentum embeddings (gathered from every process) replace the oldest queue entries; each
queue has its own write position (with ``data.mix`` a modality's queue takes only the rows that
have it). The towers, queues and queue pointers are part of the model's state: checkpoints carry them and a
resumed run continues exactly. Each process scores its own rows against the shared queue (the
momentum keys of the current batch are its own; ALBEF does the same).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from align.model.cached import CachedFeatures  # a cached frozen tower: its momentum copy is itself


class MomentumTowers(nn.Module):
    """EMA copies of the towers and heads, and one queue of past momentum embeddings per modality."""

    def __init__(
        self,
        adapters: nn.ModuleDict,
        heads: nn.ModuleDict,
        embed_dim: int,
        queue_size: int,
        momentum: float,
        distill: float,
    ) -> None:
        super().__init__()
        self.adapters, self.heads = copy.deepcopy(adapters), copy.deepcopy(heads)
        for p in self.parameters():
            p.requires_grad_(False)
        self.m, self.distill, self.queue_size = momentum, distill, queue_size
        g = torch.Generator().manual_seed(0)
        for mod in adapters:  # random unit vectors, as MoCo and ALBEF start their queues
            self.register_buffer(f"queue_{mod}", F.normalize(torch.randn(queue_size, embed_dim, generator=g), dim=-1))
        for mod in adapters:  # one write position per queue: with data.mix modalities fill at different rates
            self.register_buffer(f"queue_ptr_{mod}", torch.zeros(1, dtype=torch.long))

    def queue(self, mod: str) -> torch.Tensor:
        return getattr(self, f"queue_{mod}")

    def queue_ptr(self, mod: str) -> int:
        """Where the next momentum embedding of ``mod`` goes in its queue."""
        return int(getattr(self, f"queue_ptr_{mod}"))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = state_dict.pop(prefix + "queue_ptr", None)  # checkpoints with one pointer for every queue
        if old is not None:
            for mod in self.adapters:
                state_dict.setdefault(f"{prefix}queue_ptr_{mod}", old.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def encode(self, inputs: dict) -> dict[str, torch.Tensor]:
        return {
            m: F.normalize(self.heads[m](x.features if isinstance(x, CachedFeatures) else self.adapters[m](x)), dim=-1)
            for m, x in inputs.items()
            if m in self.adapters
        }

    @torch.no_grad()
    def update(self, adapters: nn.ModuleDict, heads: nn.ModuleDict) -> None:
        """theta' <- m theta' + (1 - m) theta, after the optimizer step."""
        for own, src in ((self.adapters, adapters), (self.heads, heads)):
            for p_m, p in zip(own.parameters(), src.parameters()):
                p_m.mul_(self.m).add_(p.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: dict[str, torch.Tensor]) -> None:
        """The newest momentum embeddings replace the oldest of their modality's queue. Under data
        parallelism the caller hands every process's, gathered in rank order
        (``align.objectives.task.gather_keys``), so every process's queues stay the same."""
        for mod in self.adapters:
            k = keys[mod][-self.queue_size :] if mod in keys else None
            if k is None or not len(k):
                continue
            ptr = self.queue_ptr(mod)
            idx = (torch.arange(len(k), device=k.device) + ptr) % self.queue_size
            self.queue(mod)[idx] = k.to(self.queue(mod).dtype)
            getattr(self, f"queue_ptr_{mod}").fill_((ptr + len(k)) % self.queue_size)
