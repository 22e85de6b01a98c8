"""What the loss tests share (tests/objectives): float64 leaf inputs drawn from a seed, and a loss's
value with its gradients with respect to every leaf."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def pair_inputs(batch: int, dim: int, seed: int, bias: bool, bias_std: float = 5.0, dtype=torch.float64):
    """Leaf tensors (a, b, log_scale, logit_bias): unit-norm features [batch, dim], a log temperature
    in [0, ln 100] and, with ``bias``, a bias ~ N(0, bias_std^2) (else None); drawn in that order."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    log_scale = (torch.rand((), generator=g, dtype=dtype) * math.log(100.0)).requires_grad_()
    logit_bias = (torch.randn((), generator=g, dtype=dtype) * bias_std).requires_grad_() if bias else None
    return a, b, log_scale, logit_bias


def value_and_grads(
    loss_fn: Callable,
    a: torch.Tensor,
    b: torch.Tensor,
    log_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    allow_unused: bool = False,
    **kwargs,
):
    """(value, grads): ``loss_fn(a, b, exp(log_scale), logit_bias, **kwargs)`` and its gradients
    w.r.t. a, b, log_scale (and the bias when there is one); ``allow_unused``: a leaf the loss does
    not use gets zeros."""
    leaves = [a, b, log_scale] + ([logit_bias] if logit_bias is not None else [])
    value = loss_fn(a, b, log_scale.exp(), logit_bias, **kwargs)
    grads = torch.autograd.grad(value, leaves, allow_unused=allow_unused)
    return value.detach(), tuple(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads))


def tuple_inputs(m: int, batch: int, dim: int, seed: int):
    """(xs, log_scale): ``m`` leaf tensors of unit-norm rows [batch, dim] and a log temperature in
    [0, ln 100], for losses over several modalities at once."""
    g = torch.Generator().manual_seed(seed)
    xs = [
        F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
        for _ in range(m)
    ]
    log_scale = (torch.rand((), generator=g, dtype=torch.float64) * math.log(100.0)).requires_grad_()
    return xs, log_scale


def tuple_value_and_grads(loss_fn: Callable, xs: Sequence[torch.Tensor], log_scale: torch.Tensor):
    """(value, grads) of ``loss_fn(xs, exp(log_scale))`` w.r.t. every x and log_scale."""
    value = loss_fn(xs, log_scale.exp())
    return value.detach(), torch.autograd.grad(value, [*xs, log_scale])
