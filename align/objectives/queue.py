"""ALBEF's contrastive loss against momentum keys and queues (Li et al. 2021, arXiv 2107.07651,
Eq. 1-2 and 5); the towers and queues it reads are ``align.model.momentum.MomentumTowers``, whose
docstring has the formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def queue_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    a_m: torch.Tensor,
    b_m: torch.Tensor,
    queue_a: torch.Tensor,
    queue_b: torch.Tensor,
    scale: torch.Tensor,
    distill: float,
) -> torch.Tensor:
    """ALBEF's contrastive loss with momentum keys, queues and (``distill`` > 0) soft targets."""
    b_all = torch.cat([b_m, queue_b.clone().detach()])
    a_all = torch.cat([a_m, queue_a.clone().detach()])
    terms = []
    for q, q_m, keys in ((a, a_m, b_all), (b, b_m, a_all)):
        logits = scale * q @ keys.T
        target = torch.zeros_like(logits)
        target[torch.arange(len(q)), torch.arange(len(q))] = 1.0
        if distill > 0:
            with torch.no_grad():
                soft = (scale * q_m @ keys.T).softmax(dim=-1)
            target = distill * soft + (1 - distill) * target
        terms.append(-(F.log_softmax(logits, dim=-1) * target).sum(dim=-1).mean())
    return (terms[0] + terms[1]) / 2
