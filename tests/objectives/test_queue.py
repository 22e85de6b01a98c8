"""ALBEF's queue loss (align/objectives/queue.py) equals the paper's formula written out here with loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from align.objectives.queue import queue_loss


def reference(a, b, a_m, b_m, qa, qb, s, alpha):
    """ALBEF Eq. 1-2, 5 with explicit loops: candidates = this batch's momentum keys, then the queue."""
    total = 0.0
    for q_, qm_, keys in ((a, a_m, torch.cat([b_m, qb])), (b, b_m, torch.cat([a_m, qa]))):
        for i in range(len(q_)):
            logits = torch.stack([s * q_[i] @ k for k in keys])
            soft = torch.stack([s * qm_[i] @ k for k in keys]).softmax(0).detach()  # ALBEF: no_grad targets
            y = alpha * soft + (1 - alpha) * F.one_hot(torch.tensor(i), len(keys)).to(logits.dtype)
            total = total - (y * logits.log_softmax(0)).sum() / len(q_) / 2
    return total


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_queue_loss_is_albefs_formula(alpha):
    g = torch.Generator().manual_seed(0)
    unit = lambda n: F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    a, b = unit(5).requires_grad_(), unit(5).requires_grad_()
    a_m, b_m, qa, qb = unit(5), unit(5), unit(7), unit(7)
    s = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    got = queue_loss(a, b, a_m, b_m, qa, qb, s, alpha)
    want = reference(a, b, a_m, b_m, qa, qb, s, alpha)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad(got, (a, b, s)), torch.autograd.grad(want, (a, b, s))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    dropped = reference(a, b, a_m, b_m, qa[:0], qb[:0], s, alpha)  # the queue's negatives matter
    assert abs(dropped.item() - want.item()) > 1e-3
