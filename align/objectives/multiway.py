"""Objectives beyond pairs (Symile, GRAM), Matryoshka nesting and per-pair temperatures.

open_clip ``loss.py`` style: one small class per objective. ``logit_scale`` is the exponentiated
temperature (``1 / tau``), as for ``align.objectives.losses``. Under data parallelism the N-ary losses gather
every modality *with gradients* (``align.objectives.losses.gather_features``) and score this process's rows
against the global batch, so the mean over processes is the one-process loss of the global batch.

* ``SymileLoss`` -- Saporta, Puli, Goldstein, Ranganath 2024, "Contrasting with Symile: Simple
  Model-Agnostic Representation Learning for Unlimited Modalities" (NeurIPS 2024, arXiv 2411.01053).
* ``GramLoss`` -- Cicchetti, Grassucci, Sigillo, Comminiello 2025, "Gramian Multimodal
  Representation Learning and Alignment" (ICLR 2025, arXiv 2412.11959).
* ``MatryoshkaLoss`` / ``truncate`` -- Kusupati et al. 2022, "Matryoshka Representation Learning"
  (NeurIPS 2022, arXiv 2205.13147).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from align.objectives.losses import Loss, gather_features
from align.registry import LOSSES


def mip(*vectors: torch.Tensor) -> torch.Tensor:
    """Multilinear inner product over the last dim: ``MIP(x_1..x_M) = sum_d prod_m x_m[d]``
    (broadcasting the leading dims). For two vectors it is the dot product."""
    product = vectors[0]
    for v in vectors[1:]:
        product = product * v
    return product.sum(-1)


def _check_batch(embeddings: Sequence[torch.Tensor], least: int, message: str) -> list[torch.Tensor]:
    embeddings = list(embeddings)
    if len(embeddings) < least:
        raise ValueError(message + f" (got {len(embeddings)})")
    shapes = {tuple(e.shape) for e in embeddings}
    if len(shapes) != 1 or len(embeddings[0].shape) != 2:
        raise ValueError(f"every modality's embeddings must be [B, d] of one shape; got {sorted(shapes)}")
    return embeddings


class _Multiway(Loss):
    """A term over three or more modalities at once (``train.multiway``):
    ``forward(embeddings, logit_scale)``, ``embeddings`` one [B, d] tensor per modality."""

    multiway = True


@LOSSES.register("symile")
class SymileLoss(_Multiway):
    """Symile: contrastive loss over M >= 3 modalities scored by the multilinear inner product.

    For each modality ``a`` in turn as the *anchor*, row i's anchor ``x_a[i]`` must pick its own
    tuple of the other modalities among candidates; logits are ``logit_scale * MIP``:

    * ``negative_sampling="n"`` (the paper's O(N)): candidate j != i is
      ``(x_k[pi_{a,k}(j)])_{k != a}``, each other modality's rows shuffled by its own random
      permutation (negatives from the product of the marginals); candidate i is the positive tuple::

          logits_a[i, j] = MIP(x_a[i], x_k[pi_{a,k}(j)] for k != a)   (j != i)
          logits_a[i, i] = MIP(x_a[i], x_k[i] for k != a)

      (``compute_logits_n`` in github.com/rajesh-lab/symile, same permutations order: for each
      anchor a, for each k != a in increasing order, one ``torch.randperm``.) There is a small
      chance that a shuffled tuple equals the positive one (a false negative), as in the paper.
    * ``negative_sampling="n_squared"`` (the paper's O(N^2)): every combination of rows of the
      other modalities is a candidate, ``N^(M-1)`` per row; the positive is ``(x_k[i])_{k != a}``.
      Unlike the official general-M code this keeps gradients through the non-anchor modalities
      (it detaches them for M > 3) and marks the positive at combination (i, ..., i) (the official
      M > 3 code labels column i, which is a different combination); for M = 3 it equals the
      official ``compute_logits_n_squared_3_modes``. Memory: ``N^(M-1) x d`` per anchor.

    ``L = (1/M) sum_a CE(logits_a, positives)``. The candidates are tuples of the *other*
    modalities with the anchor fixed, as in the official code: negatives from the product of the
    marginals make the optimal MIP the total correlation's log-ratio for every anchor alike
    (swapping only ``x_a[j]`` into row i's tuple would instead estimate I(x_a; rest), a different
    critic per anchor). ``perms`` ([M, M, N] long, N the global batch, ``perms[a, k]`` for anchor
    a and other modality k; the diagonal unused) replaces the random draw, e.g. for
    reproducibility; by default they come from ``generator`` (or torch's global RNG; under data
    parallelism each process then shuffles the global batch its own way, still valid negatives).
    """

    def __init__(
        self,
        negative_sampling: str = "n",
        generator: torch.Generator | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__(rank, world_size)
        if negative_sampling not in ("n", "n_squared"):
            raise ValueError(f"Symile negative_sampling must be 'n' or 'n_squared', got {negative_sampling!r}")
        self.negative_sampling = negative_sampling
        self.generator = generator

    def sample_perms(self, n: int, m: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """[m, m, n]: for anchor a and each k != a (in order) a random permutation of n rows."""
        perms = torch.arange(n).repeat(m, m, 1)
        for a in range(m):
            for k in range(m):
                if k != a:
                    perms[a, k] = torch.randperm(n, generator=self.generator)
        return perms.to(device)

    def forward(
        self, embeddings: Sequence[torch.Tensor], logit_scale: torch.Tensor, perms: torch.Tensor | None = None
    ) -> torch.Tensor:
        xs = _check_batch(embeddings, 3, "Symile needs three or more modalities; for two use clip")
        m, (n, d) = len(xs), xs[0].shape
        rank, world = self.dist()
        alls = [gather_features(x, world) for x in xs]
        total = alls[0].shape[0]
        rows = torch.arange(n, device=xs[0].device) + n * rank  # this process's rows, globally
        if self.negative_sampling == "n":
            if perms is None:
                perms = self.sample_perms(total, m, xs[0].device)
            if tuple(perms.shape) != (m, m, total):
                raise ValueError(
                    f"Symile perms must be [{m}, {m}, {total}] (modalities, modalities, "
                    f"global batch), got {list(perms.shape)}"
                )
            positive = mip(*xs)  # the same for every anchor
            is_positive = torch.zeros(n, total, dtype=torch.bool, device=xs[0].device)
            is_positive[rows - n * rank, rows] = True
        losses = []
        for a in range(m):
            others = [k for k in range(m) if k != a]
            if self.negative_sampling == "n":
                shuffled = alls[others[0]][perms[a, others[0]]]
                for k in others[1:]:
                    shuffled = shuffled * alls[k][perms[a, k]]
                logits = torch.where(is_positive, positive[:, None], xs[a] @ shuffled.T)
                target = rows
            else:
                combos = alls[others[0]]
                for k in others[1:]:  # row-major over (j_1, ..., j_{M-1})
                    combos = (combos.unsqueeze(1) * alls[k].unsqueeze(0)).reshape(-1, d)
                logits = xs[a] @ combos.T
                target = rows * sum(total**p for p in range(m - 1))  # flat index of (i, ..., i)
            losses.append(F.cross_entropy(logit_scale * logits, target))
        return torch.stack(losses).mean()


def gram_volume(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Volume of the parallelotope spanned by the M rows of ``vectors`` [..., M, d]:
    ``sqrt(det(A A^T))`` (``A`` = the rows), permutation-invariant, 0 for dependent rows."""
    return _volume_from_gram(vectors @ vectors.transpose(-1, -2), eps)


def _volume_from_gram(gram: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(max(det G, 0) + eps)``. ``G`` is PSD, so det >= 0 in exact arithmetic; rounding can
    make a near-degenerate one slightly negative (clamped), and ``eps`` keeps sqrt's derivative
    finite at 0 (the volume of identical vectors is ``sqrt(eps)``, 1e-6 by default). Half
    precision is promoted to float32 (as the official code does); float64 stays float64."""
    if gram.dtype in (torch.float16, torch.bfloat16):
        gram = gram.float()
    return (torch.linalg.det(gram).clamp_min(0) + eps).sqrt()


def volume_matrix(anchor: torch.Tensor, others: Sequence[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """[n1, n2]: entry (i, j) is the volume spanned by ``anchor[i]`` and ``others[k][j]`` for all k
    (the other modalities stay together as row j's tuple). ``anchor`` [n1, d], ``others`` [n2, d]."""
    n1, n2 = anchor.shape[0], others[0].shape[0]
    aa = (anchor * anchor).sum(-1)[:, None, None].expand(n1, n2, 1)
    ao = torch.stack([anchor @ o.T for o in others], dim=-1)  # [n1, n2, M-1]
    oo = torch.stack([torch.stack([(o * p).sum(-1) for p in others], -1) for o in others], -2)  # [n2, M-1, M-1]
    top = torch.cat([aa, ao], dim=-1).unsqueeze(-2)  # [n1, n2, 1, M]
    bottom = torch.cat([ao.unsqueeze(-1), oo.expand(n1, -1, -1, -1)], dim=-1)  # [n1, n2, M-1, M]
    return _volume_from_gram(torch.cat([top, bottom], dim=-2), eps)


@LOSSES.register("gram")
class GramLoss(_Multiway):
    """GRAM: contrastive loss scored by the Gramian volume of the M embeddings of a tuple.

    ``Vol(v_1..v_M) = sqrt(det G)``, ``G = A A^T`` the M x M Gram matrix of the (unit) embeddings;
    it is 0 when they coincide and 1 when they are orthonormal. With ``anchor`` a::

        V[i, j] = Vol(x_a[i], x_k[j] for k != a)
        L = ( CE(-logit_scale * V,   arange) + CE(-logit_scale * V^T, arange) ) / 2

    the anchor->rest and rest->anchor directions of the official code (github.com/ispamm/GRAM,
    ``volume_computation`` and ``forward_ret``; it divides by a learnable ``contra_temp``, i.e.
    ``logit_scale = 1 / contra_temp``, and uses ``label_smoothing=0.1``, here an option with the
    default 0 of ``ClipLoss``). Under data parallelism the directions are local anchors vs. global
    tuples and local tuples vs. global anchors, as there. The paper's data-anchor matching term (a
    matching head over a fusion encoder, with volume-mined hard negatives) is not a loss on
    embeddings and is left out.

    With M = 2, ``Vol = sqrt(1 - cos^2) = |sin theta|``: the logit ``-s |sin theta|`` ranks
    candidates like CLIP's ``s cos theta`` on the hemisphere cos >= 0, but treats antipodal
    embeddings as aligned, and near alignment it is linear in the angle (CLIP's is quadratic).
    ``anchor`` (an index into ``embeddings``) is set here (a config option) or per call.
    Numerics: ``_volume_from_gram``.
    """

    def __init__(
        self,
        anchor: int = 0,
        label_smoothing: float = 0.0,
        eps: float = 1e-12,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__(rank, world_size)
        self.anchor, self.label_smoothing, self.eps = anchor, label_smoothing, eps

    def forward(
        self, embeddings: Sequence[torch.Tensor], logit_scale: torch.Tensor, anchor: int | None = None
    ) -> torch.Tensor:
        xs = _check_batch(embeddings, 2, "GRAM needs two or more modalities")
        anchor = self.anchor if anchor is None else anchor
        if not -len(xs) <= anchor < len(xs):
            raise ValueError(f"anchor {anchor} out of range for {len(xs)} modalities")
        anchor %= len(xs)
        rank, world = self.dist()
        n = xs[0].shape[0]
        x_a, rest = xs[anchor], [x for k, x in enumerate(xs) if k != anchor]
        labels = torch.arange(n, device=x_a.device) + n * rank
        a2r = volume_matrix(x_a, [gather_features(r, world) for r in rest], self.eps)
        r2a = a2r.T if world <= 1 else volume_matrix(gather_features(x_a, world), rest, self.eps).T
        ce = lambda vol: F.cross_entropy(-logit_scale * vol, labels, label_smoothing=self.label_smoothing)  # noqa: E731
        return (ce(a2r) + ce(r2a)) / 2


def truncate(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` coordinates re-normalised to unit length (a Matryoshka sub-embedding)."""
    if not 1 <= dim <= embeddings.shape[-1]:
        raise ValueError(f"Matryoshka dim {dim} must be in [1, {embeddings.shape[-1]}] (the embedding dim)")
    return F.normalize(embeddings[..., :dim], dim=-1)


class MatryoshkaLoss(nn.Module):
    """Matryoshka Representation Learning around a pairwise loss:
    ``L = sum_m c_m * inner(truncate(a, m), truncate(b, m), ...)`` over nested prefix sizes m in
    ``dims`` (increasing), with MRL's relative importance ``c_m = 1`` by default; ``mean=True``
    divides by ``sum_m c_m``. ``inner`` is any ``forward(a, b, logit_scale, logit_bias=None, **kw)``
    loss (``ClipLoss``, ``SigLipLoss``, ...). Coordinates past ``max(dims)`` get no gradient, so
    MRL's list ends at the full dim."""

    def __init__(
        self, inner: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None, mean: bool = False
    ):
        super().__init__()
        dims = tuple(int(m) for m in dims)
        if not dims or dims[0] < 1 or any(x >= y for x, y in zip(dims, dims[1:])):
            raise ValueError(f"Matryoshka dims must be positive and increasing, got {dims}")
        weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(dims)
        if len(weights) != len(dims) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"Matryoshka weights {weights} must be >= 0, not all 0, one per dim {dims}")
        self.inner, self.dims, self.weights, self.mean = inner, dims, weights, mean

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.dims[-1] > a.shape[-1]:
            raise ValueError(f"Matryoshka dim {self.dims[-1]} exceeds the embedding dim {a.shape[-1]}")
        total = sum(
            w * self.inner(truncate(a, m), truncate(b, m), logit_scale, logit_bias, **kwargs)
            for m, w in zip(self.dims, self.weights)
        )
        return total / sum(self.weights) if self.mean else total
