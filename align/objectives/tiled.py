"""Tiled CLIP / SigLIP losses (Inf-CL, arXiv 2410.17243): the same values and gradients as
``align.objectives.losses.ClipLoss`` / ``SigLipLoss`` without ever holding the [B, B] logit matrix.

Why: the dense losses keep several B x B float tensors alive (logits, log-softmax in each
direction, their gradients); open_clip's ``ClipLoss`` peaks at ~3.5 B^2 * 4 bytes, i.e. ~3.5 GiB
extra at B=16384 and ~60 GiB at B=65536. Here the logits exist only one [tile, tile] block at a
time, so memory is O(B*d + tile^2) and the global batch is limited by the encoders, not the loss.

How (one ``torch.autograd.Function`` per loss):

* CLIP: the forward walks the blocks ``t = scale * q_I @ k_J^T + bias`` and folds each block's
  log-sum-exp into a running per-row LSE (``logaddexp``), and, when one matrix serves both
  directions (one process, or ``local_loss=False``), a per-column LSE too, so that matrix is
  computed once, not once per direction. The backward recomputes each block, turns it into
  ``softmax(t - lse) / rows`` and accumulates ``dq``, ``dk`` and ``d scale`` block by block; the
  label term (-1 at each positive) is added once, outside the loop, from the paired rows.
  Cost: 4 block matmuls over the whole matrix (forward 1, backward 1 recompute + 2) against the
  dense loss's 3, but every elementwise pass runs on a cache-sized block instead of a 1 GiB
  tensor, which on CPU is what the dense loss spends most of its time on (see
  benchmarks/loss_memory.py).
* SigLIP: the loss is a plain sum of softplus terms (no normalisation), so when gradients will be
  needed the forward computes them in the same pass (``sigmoid(t)`` per block) and the backward
  only scales them: 3 block matmuls, like the dense loss.

Under data parallelism each process scores its own rows against the gathered columns (gathered
with ``torch.distributed.nn.all_gather``, so gradients reach the owning process), exactly as the
dense losses do; the label of local row i is global column ``i + rank * n``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from align.objectives.losses import Loss, SigLipLoss, gather_features

Tensor = torch.Tensor


def _tiles(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _acc_dtype(*tensors: Tensor) -> torch.dtype:
    """Compute in the inputs' dtype, but never below float32 (bf16 / fp16 features are upcast:
    the LSE of thousands of terms needs float32 accumulation)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _block(qs: Tensor, k: Tensor, bias: Optional[Tensor], rows: slice, cols: slice) -> Tensor:
    """Logits of one block, ``qs`` already multiplied by the scale: [rows, cols]."""
    if bias is None:
        return qs[rows] @ k[cols].T
    return torch.addmm(bias, qs[rows], k[cols].T)


def _prepare(q: Tensor, k: Tensor, scale: Tensor, bias: Optional[Tensor]):
    dtype = _acc_dtype(q, k, scale)
    q, k, scale = q.to(dtype), k.to(dtype), scale.to(dtype)
    return q, k, q * scale, scale, None if bias is None else bias.to(dtype)


def _cast(grad: Optional[Tensor], like: Optional[Tensor], needed: bool) -> Optional[Tensor]:
    return grad.to(like.dtype).reshape(like.shape) if needed and like is not None else None


class _InfoNCE(torch.autograd.Function):
    """Cross-entropy of the rows of ``t = scale * q @ k^T + bias`` with the label of row i at column
    ``i + offset`` (mean over rows); with ``both`` (square, offset 0) the mean of that and the same
    over the columns, i.e. the symmetric CLIP loss of one matrix."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, scale: Tensor, bias: Optional[Tensor], offset: int, both: bool, tile: int
    ) -> Tensor:
        with torch.autocast(q.device.type, enabled=False):
            q_, k_, qs, _, b = _prepare(q, k, scale, bias)
            n, m = q.shape[0], k.shape[0]
            assert not both or (n == m and offset == 0), "both directions need a square, unshifted matrix"
            lse_r = q_.new_full((n,), float("-inf"))
            lse_c = q_.new_full((m,), float("-inf")) if both else None
            for rows in _tiles(n, tile):
                for cols in _tiles(m, tile):
                    t = _block(qs, k_, b, rows, cols)
                    lse_r[rows] = torch.logaddexp(lse_r[rows], t.logsumexp(1))
                    if both:
                        lse_c[cols] = torch.logaddexp(lse_c[cols], t.logsumexp(0))
            pos = (qs * k_[offset : offset + n]).sum(1)
            if b is not None:
                pos = pos + b
            loss = (lse_r - pos).mean()
            if both:
                loss = (loss + (lse_c - pos).mean()) / 2
        ctx.save_for_backward(q, k, scale, bias, lse_r, lse_c)
        ctx.offset, ctx.both, ctx.tile = offset, both, tile
        return loss.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, scale, bias, lse_r, lse_c = ctx.saved_tensors
        offset, both, tile = ctx.offset, ctx.both, ctx.tile
        with torch.autocast(q.device.type, enabled=False):
            q_, k_, qs, s, b = _prepare(q, k, scale, bias)
            n, m = q.shape[0], k.shape[0]
            w_r = 1.0 / n / (2 if both else 1)  # d loss / d t = w_r * softmax_row (+ w_c * softmax_col)
            w_c = 1.0 / m / 2
            gq = torch.zeros_like(q_)  # sum_j dL/dt_ij k_j  (times scale = d loss / d q)
            gk = torch.zeros_like(k_)  # sum_i dL/dt_ij scale q_i  (= d loss / d k)
            for rows in _tiles(n, tile):
                for cols in _tiles(m, tile):
                    t = _block(qs, k_, b, rows, cols)
                    if both:
                        g = (t - lse_c[None, cols]).exp_().mul_(w_c)
                        g.add_(t.sub_(lse_r[rows, None]).exp_(), alpha=w_r)
                    else:
                        g = t.sub_(lse_r[rows, None]).exp_().mul_(w_r)
                    gq[rows].addmm_(g, k_[cols])
                    gk[cols].addmm_(g.T, qs[rows])
            w_pos = w_r + (w_c if both else 0.0)  # each positive is in one row (and one column) term
            gq.sub_(k_[offset : offset + n], alpha=w_pos)
            gk[offset : offset + n].sub_(qs, alpha=w_pos)
            g = grad_out.to(q_.dtype)
            grad_scale = (q_ * gq).sum() * g
            grad_q, grad_k = gq.mul_(s * g), gk.mul_(g)
        need = ctx.needs_input_grad
        # the bias shifts every logit of a softmax row equally: its gradient is exactly 0
        grad_bias = torch.zeros_like(bias) if bias is not None and need[3] else None
        return (
            _cast(grad_q, q, need[0]),
            _cast(grad_k, k, need[1]),
            _cast(grad_scale, scale, need[2]),
            grad_bias,
            None,
            None,
            None,
        )


class _Sigmoid(torch.autograd.Function):
    """SigLIP: ``sum_ij -log sigmoid(y_ij t_ij) / n`` with y = +1 at (i, i + offset), else -1.
    With ``with_grad`` the gradients are computed in the forward's single pass over the blocks."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, scale: Tensor, bias: Optional[Tensor], offset: int, tile: int, with_grad: bool
    ) -> Tensor:
        with torch.autocast(q.device.type, enabled=False):
            q_, k_, qs, s, b = _prepare(q, k, scale, bias)
            n, m = q.shape[0], k.shape[0]
            # the scalar sums of n*m terms are kept in float64 (they cost nothing at this size)
            total = q_.new_zeros((), dtype=torch.float64)
            gb = q_.new_zeros((), dtype=torch.float64)
            gq = torch.zeros_like(q_) if with_grad else None
            gk = torch.zeros_like(k_) if with_grad else None
            for rows in _tiles(n, tile):
                for cols in _tiles(m, tile):
                    t = _block(qs, k_, b, rows, cols)
                    if with_grad:
                        g = torch.sigmoid(t)  # d softplus(t) / dt
                        gq[rows].addmm_(g, k_[cols])
                        gk[cols].addmm_(g.T, qs[rows])
                        if b is not None:
                            gb += g.sum()
                    # -log sigmoid(-t) = softplus(t); past 40 softplus(t) == t in float64
                    total += F.softplus(t, threshold=40).sum()
            pos = (qs * k_[offset : offset + n]).sum(1)  # a positive's term is softplus(t) - t
            if b is not None:
                pos = pos + b
            loss = ((total - pos.sum()) / n).to(q_.dtype)
            if with_grad:  # the positives' -1: d(softplus(t) - t)/dt = sigmoid(t) - 1
                gq.sub_(k_[offset : offset + n])
                gk[offset : offset + n].sub_(qs)
                grad_scale = (q_ * gq).sum() / n
                ctx.grads = (gq.mul_(s / n), gk.div_(n), grad_scale, ((gb - n) / n).to(q_.dtype))
        ctx.save_for_backward(q, k, scale, bias)
        return loss.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, scale, bias = ctx.saved_tensors
        if not hasattr(ctx, "grads"):
            raise RuntimeError("TiledSigLipLoss: forward ran without gradients (grad mode was off)")
        need = ctx.needs_input_grad
        g = grad_out.to(ctx.grads[0].dtype)
        gq, gk, gs, gb = (x * g for x in ctx.grads)
        return (
            _cast(gq, q, need[0]),
            _cast(gk, k, need[1]),
            _cast(gs, scale, need[2]),
            _cast(gb, bias, need[3]),
            None,
            None,
            None,
        )


def _check_tile(tile_size: int) -> int:
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    return int(tile_size)


class TiledClipLoss(Loss):
    """``ClipLoss`` computed in [tile_size, tile_size] blocks (same arguments, same values).

    One process, or ``local_loss=False``: one matrix (``a @ all_b^T``) gives both directions.
    ``local_loss=True`` under data parallelism: this process's rows of a against every b and its
    rows of b against every a, as the dense loss does."""

    def __init__(
        self, local_loss: bool = True, rank: int | None = None, world_size: int | None = None, tile_size: int = 1024
    ):
        super().__init__(rank, world_size)
        self.local_loss = local_loss
        self.tile_size = _check_tile(tile_size)

    def forward(self, a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None) -> Tensor:
        rank, world = self.dist()
        tile = self.tile_size
        if world > 1:
            all_a, all_b = gather_features(a, world), gather_features(b, world)
            if self.local_loss:
                offset = a.shape[0] * rank
                return (
                    _InfoNCE.apply(a, all_b, logit_scale, logit_bias, offset, False, tile)
                    + _InfoNCE.apply(b, all_a, logit_scale, logit_bias, offset, False, tile)
                ) / 2
            return _InfoNCE.apply(all_a, all_b, logit_scale, logit_bias, 0, True, tile)
        return _InfoNCE.apply(a, b, logit_scale, logit_bias, 0, True, tile)


class TiledSigLipLoss(Loss):
    """``SigLipLoss`` computed in [tile_size, tile_size] blocks (same arguments, same values):
    this process's rows of a against the gathered b, divided by the local batch size."""

    init_logit_scale, init_logit_bias = SigLipLoss.init_logit_scale, SigLipLoss.init_logit_bias
    probability = SigLipLoss.probability

    def __init__(self, rank: int | None = None, world_size: int | None = None, tile_size: int = 1024):
        super().__init__(rank, world_size)
        self.tile_size = _check_tile(tile_size)

    def forward(self, a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None) -> Tensor:
        rank, world = self.dist()
        all_b = gather_features(b, world)
        inputs = [a, all_b, logit_scale] + ([logit_bias] if logit_bias is not None else [])
        with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        return _Sigmoid.apply(a, all_b, logit_scale, logit_bias, a.shape[0] * rank, self.tile_size, with_grad)


# dense loss name (``model.loss``) -> its tiled form; build_loss picks from here
TILED: dict[str, type[Loss]] = {"clip": TiledClipLoss, "siglip": TiledSigLipLoss}
