"""Pairwise contrastive objectives beyond CLIP / SigLIP (open_clip ``loss.py`` style): one small
class per objective, each registered in ``align.registry.LOSSES``.

Common call: ``loss(a, b, logit_scale, logit_bias=None, *, labels=None) -> scalar``, with ``a``,
``b`` [B, d] L2-normalised embeddings whose row i is a positive pair, ``logit_scale`` already
exponentiated (scalar or [1]) and ``labels`` [B] integer class ids (optional except for
``multi_positive``). Notation for one direction (a -> b; b -> a swaps the roles):

    s_ij = logit_scale * <a_i, b_j> + logit_bias          (the bias cancels in all four objectives)
    P(i) = {j : labels_j == labels_i}  given labels, else {i}      (always contains i)
    N(i) = complement of P(i)                                      (the negatives of row i)

Every objective is the mean over rows of a per-row loss, averaged over the two directions.
Under several processes each process gathers ``a``, ``b`` (with gradients,
``torch.distributed.nn.all_gather``) and ``labels`` (detached, ``torch.distributed.all_gather``),
and, as ``ClipLoss`` with ``local_loss``, scores its own rows against the global batch (its row i
is global row ``i + rank * B``), so the mean over processes is the one-process loss of the global
batch; with ``local_loss=False`` every process computes that global loss itself. Local batches
must have the same size on every process. A row with no negative (B = 1, or every label equal)
contributes 0 to ``dcl`` and ``hcl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.objectives.losses import Loss, gather_features
from align.registry import LOSSES

Tensor = torch.Tensor


def gather_labels(labels: Tensor, world_size: int) -> Tensor:
    """Every process's labels in rank order (no gradient: labels are data)."""
    if world_size <= 1:
        return labels
    import torch.distributed as dist

    labels = labels.detach().contiguous()
    parts = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(parts, labels)
    return torch.cat(parts)


class _Pairwise(Loss):
    """Gathering, the two directions and the masks; subclasses define ``direction``."""

    def __init__(self, local_loss: bool = True, rank: int | None = None, world_size: int | None = None):
        super().__init__(rank, world_size)
        self.local_loss = local_loss

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        *,
        labels: Tensor | None = None,
    ) -> Tensor:
        if labels is None and self.needs_labels:
            raise ValueError("multi_positive needs labels: set label_column on data.train")
        if labels is not None and labels.shape != a.shape[:1]:
            raise ValueError(f"labels must have shape [{a.shape[0]}] (one per row), got {list(labels.shape)}")
        rank, world = self.dist()
        n = a.shape[0]
        all_a, all_b = gather_features(a, world), gather_features(b, world)
        all_labels = None if labels is None else gather_labels(labels, world)
        if world > 1 and not self.local_loss:
            a, b, labels, offset = all_a, all_b, all_labels, 0
        else:
            offset = n * rank if world > 1 else 0
        return (
            self.direction(a, all_b, logit_scale, logit_bias, labels, all_labels, offset)
            + self.direction(b, all_a, logit_scale, logit_bias, labels, all_labels, offset)
        ) / 2

    def direction(
        self,
        q: Tensor,
        k: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        q_labels: Tensor | None,
        k_labels: Tensor | None,
        offset: int,
    ) -> Tensor:
        raise NotImplementedError


def _logits(q: Tensor, k: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    logits = scale * q @ k.T
    return logits if bias is None else logits + bias


def _positives(
    q_labels: Tensor | None, k_labels: Tensor | None, rows: int, cols: int, offset: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(P, pos): P [rows, cols] the mask of P(i); pos [rows] the paired column ``i + offset``."""
    pos = torch.arange(rows, device=device) + offset
    if q_labels is None:
        return pos[:, None] == torch.arange(cols, device=device)[None, :], pos
    return q_labels[:, None] == k_labels[None, :], pos


def _rows_with(mask: Tensor, x: Tensor) -> Tensor:
    """``x`` with the entries outside ``mask`` at -inf; rows with no entry become 0 (a placeholder that
    keeps logsumexp / softmax and their gradients finite; such rows are dropped by the caller)."""
    x = x.masked_fill(~mask, float("-inf"))
    return torch.where(mask.any(1, keepdim=True), x, torch.zeros_like(x))


@LOSSES.register("multi_positive")
class MultiPositiveLoss(_Pairwise):
    """Multi-positive InfoNCE: every column with the row's label is a positive.

    Row loss (a -> b; b -> a the same on s^T), mean over rows and over the two directions::

        l_i = -(1/|P(i)|) * sum_{p in P(i)} log( exp(s_ip) / sum_j exp(s_ij) )

    i.e. the cross-entropy between the uniform distribution over P(i) and softmax(s_i.). This is the
    "L_out" form of SupCon (Khosla et al., 2020, arXiv 2004.11362, Eq. 2; the sum over positives
    outside the log) in the cross-modal setting, where the anchor's own pair b_i is one of the
    positives and the denominator runs over all columns; it is StableRep's multi-positive
    contrastive loss (Tian et al., 2023, arXiv 2306.00984, Eq. 3). With all labels distinct it is
    CLIP (``ClipLoss``). ``labels`` are required.

    ``variant="in"`` is SupCon's "L_in" (Eq. 3; the mean over positives inside the log)::

        l_i = -log( (1/|P(i)|) * sum_{p in P(i)} exp(s_ip) / sum_j exp(s_ij) )

    which Khosla et al. found trains worse than L_out (Table 2 there): by Jensen it is a lower
    bound of L_out, satisfied by putting the mass on any one positive.
    """

    needs_labels = True

    def __init__(
        self, local_loss: bool = True, rank: int | None = None, world_size: int | None = None, variant: str = "out"
    ):
        super().__init__(local_loss, rank, world_size)
        if variant not in ("out", "in"):
            raise TypeError(f"multi_positive variant must be 'out' or 'in', got {variant!r}")
        self.variant = variant

    def direction(self, q, k, scale, bias, q_labels, k_labels, offset):
        logits = _logits(q, k, scale, bias)
        positive, _ = _positives(q_labels, k_labels, *logits.shape, offset, q.device)
        log_prob = F.log_softmax(logits, dim=1)
        count = positive.sum(1)
        if self.variant == "in":
            inside = torch.logsumexp(_rows_with(positive, log_prob), dim=1)  # every row has >= 1 positive
            return (count.to(log_prob.dtype).log() - inside).mean()
        per_row = -(log_prob * positive).sum(1) / count
        return per_row.mean()


@LOSSES.register("dcl")
class DecoupledContrastiveLoss(_Pairwise):
    """Decoupled Contrastive Learning (Yeh et al., ECCV 2022, arXiv 2110.06848, Eq. 6): InfoNCE with
    the positive taken out of the denominator::

        l_i = -s_ii + log sum_{j in N(i)} exp(s_ij)

    Without labels N(i) = {j != i}, as in the paper (whose SimCLR denominator also holds the
    same-view negatives; here, as in CLIP, only the other modality's rows are negatives). With
    ``labels`` every column sharing row i's label leaves the denominator (the positive term stays
    s_ii). A row with N(i) empty contributes 0. The weighted variant DCLW is not implemented.
    """

    def direction(self, q, k, scale, bias, q_labels, k_labels, offset):
        logits = _logits(q, k, scale, bias)
        positive, pos = _positives(q_labels, k_labels, *logits.shape, offset, q.device)
        negative = ~positive
        per_row = torch.logsumexp(_rows_with(negative, logits), 1) - logits.gather(1, pos[:, None])[:, 0]
        return torch.where(negative.any(1), per_row, torch.zeros_like(per_row)).mean()


@LOSSES.register("hcl")
class HardNegativeLoss(_Pairwise):
    """Hard-negative weighted, debiased InfoNCE (Robinson, Chuang, Sra & Jegelka, ICLR 2021,
    "Contrastive Learning with Hard Negative Samples", arXiv 2010.04592; the estimator of its
    code, written with logits s = logit_scale * cos + bias in place of cos / t)::

        N_i  = |N(i)|
        w_ij = exp(beta * s_ij) / ((1/N_i) sum_{k in N(i)} exp(beta * s_ik))      (mean 1 over N(i))
        Ng_i = max( (sum_{j in N(i)} w_ij exp(s_ij) - tau_plus * N_i * exp(s_ii)) / (1 - tau_plus),
                    N_i * exp(-logit_scale + bias) )
        l_i  = -log( exp(s_ii) / (exp(s_ii) + Ng_i) )

    The floor is the paper's ``N * e^(-1/t)``: exp of the smallest logit unit vectors can have.
    ``tau_plus`` (class prior of false negatives, 0 = no debiasing) must be in [0, 1). With
    beta = 0 and tau_plus = 0 the weights are 1, the floor never binds and l_i is the InfoNCE /
    CLIP row loss (positive in the denominator), not DCL's. With ``labels``, same-label columns are
    not negatives. Computed with each row shifted by its (detached) maximum logit.
    """

    def __init__(
        self,
        local_loss: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        beta: float = 1.0,
        tau_plus: float = 0.0,
    ):
        super().__init__(local_loss, rank, world_size)
        if not 0.0 <= tau_plus < 1.0:
            raise ValueError(f"hcl: tau_plus must be in [0, 1), got {tau_plus}")
        self.beta, self.tau_plus = float(beta), float(tau_plus)

    def direction(self, q, k, scale, bias, q_labels, k_labels, offset):
        logits = _logits(q, k, scale, bias)
        positive, pos = _positives(q_labels, k_labels, *logits.shape, offset, q.device)
        negative = ~positive
        count = negative.sum(1).to(logits.dtype)
        shift = logits.detach().max(1, keepdim=True).values
        t = logits - shift  # every exp below is <= 1; the row loss does not depend on the shift
        t_pos = t.gather(1, pos[:, None])[:, 0]
        weights = torch.softmax(_rows_with(negative, self.beta * t), 1)  # = w_ij / N_i
        reweighted = count * (weights * t.exp() * negative).sum(1)
        ng = (reweighted - self.tau_plus * count * t_pos.exp()) / (1 - self.tau_plus)
        lowest = -scale if bias is None else bias - scale
        ng = torch.maximum(ng, count * (lowest - shift[:, 0]).exp())
        per_row = torch.log(t_pos.exp() + ng) - t_pos
        return torch.where(negative.any(1), per_row, torch.zeros_like(per_row)).mean()


@LOSSES.register("mochi")
class MoCHiLoss(_Pairwise):
    """InfoNCE with MoCHi hard-negative mixing (Kalantidis, Sariyildiz, Pion, Weinzaepfel & Larlus,
    NeurIPS 2020, "Hard Negative Mixing for Contrastive Learning", arXiv 2010.01028, Sec. 4).

    For query row q = a_i (keys k = the b's; b -> a symmetric) let H(i) be its
    n = min(n_hard, |N(i)|) negatives with the highest s_ij, in decreasing order. Synthesised,
    detached (no gradient flows into them, as in the paper) negatives::

        h_m  = normalize(alpha_m k_{H(i)[u]} + (1 - alpha_m) k_{H(i)[v]}),  alpha_m ~ U[0, 1),  m < s1
        h'_m = normalize(beta_m q + (1 - beta_m) k_{H(i)[w]}),   beta_m ~ U[0, mix_query_max),  m < s2

    with u, v, w uniform over positions in H(i); their logits logit_scale * <q, h> + bias join the
    denominator::

        l_i = -s_ii + log( sum_{j in {i} u N(i)} exp(s_ij) + sum_m exp(s(q, h_m)) + sum_m exp(s(q, h'_m)) )

    Without labels {i} u N(i) is every column: CLIP plus the synthetic terms, and s1 = s2 = 0 (or
    n_hard = 0) is CLIP; with labels, the other same-label columns are neither positive nor
    negative. Randomness: per direction (a -> b, then b -> a) one
    ``torch.rand(G, 3*s1 + 2*s2, dtype=float64, generator=generator)`` over the G rows of the global
    batch (this process uses its own rows, so same-seeded generators on every process give the
    one-process loss), columns [u | v | alpha | w | beta / mix_query_max]; positions are
    floor(U * n). ``generator=None`` uses the global RNG of the inputs' device. Memory: an extra
    B * (s1 + s2) * d tensor.
    """

    def __init__(
        self,
        local_loss: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        n_hard: int = 16,
        s1: int = 16,
        s2: int = 8,
        mix_query_max: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        super().__init__(local_loss, rank, world_size)
        if min(n_hard, s1, s2) < 0 or not 0.0 <= mix_query_max <= 1.0:
            raise ValueError("mochi: n_hard, s1, s2 must be >= 0 and mix_query_max in [0, 1]")
        self.n_hard, self.s1, self.s2, self.mix_query_max = n_hard, s1, s2, float(mix_query_max)
        self.generator = generator

    @torch.no_grad()
    def synthesize(self, q: Tensor, k: Tensor, logits: Tensor, negative: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """(h, valid): h [rows, s1 + s2, d] the unit-norm synthetic negatives of each query row (the
        s1 negative-negative mixes, then the s2 query-negative mixes), valid [rows, s1 + s2] False
        for rows without negatives."""
        rows, s1, s2 = q.shape[0], self.s1, self.s2
        device = self.generator.device if self.generator is not None else q.device
        u = torch.rand(k.shape[0], 3 * s1 + 2 * s2, dtype=torch.float64, device=device, generator=self.generator)[
            offset : offset + rows
        ].to(q.device)
        q, k = q.detach(), k.detach()
        n = negative.sum(1).clamp(max=self.n_hard)
        hard = logits.detach().masked_fill(~negative, float("-inf"))
        hard = hard.topk(max(min(self.n_hard, k.shape[0]), 1), dim=1).indices  # decreasing s_ij

        def pick(cols: slice) -> Tensor:  # [rows, m, d]: the keys at positions floor(U * n) of H(i)
            position = torch.minimum((u[:, cols] * n[:, None]).long(), (n[:, None] - 1).clamp(min=0))
            return k[hard.gather(1, position)]

        alpha = u[:, 2 * s1 : 3 * s1, None].to(q.dtype)
        beta = self.mix_query_max * u[:, 3 * s1 + s2 :, None].to(q.dtype)
        h1 = alpha * pick(slice(0, s1)) + (1 - alpha) * pick(slice(s1, 2 * s1))
        h2 = beta * q[:, None, :] + (1 - beta) * pick(slice(3 * s1, 3 * s1 + s2))
        h = F.normalize(torch.cat([h1, h2], 1), dim=-1)
        return h, (n > 0)[:, None].expand(rows, s1 + s2)

    def direction(self, q, k, scale, bias, q_labels, k_labels, offset):
        logits = _logits(q, k, scale, bias)
        positive, pos = _positives(q_labels, k_labels, *logits.shape, offset, q.device)
        negative = ~positive
        keep = negative.clone()
        keep[torch.arange(q.shape[0], device=q.device), pos] = True
        x = logits.masked_fill(~keep, float("-inf"))
        if self.s1 + self.s2 > 0 and self.n_hard > 0:
            h, valid = self.synthesize(q, k, logits, negative, offset)
            synthetic = scale * torch.einsum("rd,rsd->rs", q, h)
            synthetic = synthetic if bias is None else synthetic + bias
            x = torch.cat([x, synthetic.masked_fill(~valid, float("-inf"))], 1)
        return (torch.logsumexp(x, 1) - logits.gather(1, pos[:, None])[:, 0]).mean()
