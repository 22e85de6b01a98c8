"""align.objectives.variants (multi_positive, dcl, hcl, mochi) against references written here from each
paper's formula with explicit loops (float64): values to 1e-10, gradients w.r.t. a, b, the log
temperature and the bias to 1e-8; gradcheck; the reductions to open_clip's ClipLoss; perturbed
references that must differ (the comparisons have teeth); MoCHi's synthetic negatives; and 2 gloo
processes whose mean equals the one-process loss of the global batch.

Run as a script, this file is the worker of the 2-process test (see ``_worker``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align.objectives import factory
from align.objectives.variants import DecoupledContrastiveLoss, HardNegativeLoss, MoCHiLoss, MultiPositiveLoss
from align.registry import LOSSES
from tests.support.gloo_world import run_world, worker_main
from tests.support.losses import pair_inputs, value_and_grads

REPO = Path(__file__).resolve().parents[2]
VALUE_ATOL, GRAD_ATOL = 1e-10, 1e-8
MARGIN = 1e-3  # a perturbed reference must differ from the loss by at least this

pytestmark = pytest.mark.usefixtures("one_thread")


def _open_clip_loss():
    from open_clip import loss as oc_loss  # imported here: the 2-process workers do not need it

    return oc_loss.ClipLoss()


def _inputs(batch: int, dim: int, seed: int, bias: bool):
    """``pair_inputs`` with a bias ~ N(0, 3^2) (every objective here must cancel it)."""
    return pair_inputs(batch, dim, seed, bias, bias_std=3.0)


def _labels(batch: int, kind: str | None, seed: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "distinct":
        return torch.randperm(batch, generator=g) * 7 + 3
    if kind == "repeats":
        return torch.randint(0, max(batch // 3, 2), (batch,), generator=g)
    assert kind == "same"
    return torch.full((batch,), 5)


def _value_and_grads(fn, a, b, log_scale, logit_bias, labels):
    return value_and_grads(fn, a, b, log_scale, logit_bias, allow_unused=True, labels=labels)


def _close(x, y, what, atol):
    torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


# --- references, straight from the papers (loops over rows; exp / log spelled out) --------------


def _sim(q, k, i, j, scale, bias):
    return scale * (q[i] @ k[j]) + (0.0 if bias is None else bias)


def _negatives(i, batch, labels):
    return [j for j in range(batch) if j != i and (labels is None or labels[j] != labels[i])]


def ref_multi_positive(a, b, scale, bias=None, *, labels, bug=None, variant="out"):
    """L_out: -(1/|P(i)|) sum_{p in P(i)} log(exp(s_ip) / sum_j exp(s_ij)); L_in: -log((1/|P(i)|)
    sum_{p in P(i)} exp(s_ip) / sum_j exp(s_ij)); both directions."""
    lab = labels.tolist()

    def one(q, k):
        total = 0 * scale  # in the graph even when no row contributes
        for i in range(q.shape[0]):
            s = [_sim(q, k, i, j, scale, bias) for j in range(q.shape[0])]
            den = sum(torch.exp(x) for x in s)
            positives = [p for p in range(q.shape[0]) if lab[p] == lab[i]]
            if variant == "in":
                inside = sum(torch.exp(s[p]) / den for p in positives)
                total = total - torch.log(inside if bug == "no 1/|P|" else inside / len(positives))
                continue
            term = -sum(torch.log(torch.exp(s[p]) / den) for p in positives)
            total = total + (term if bug == "no 1/|P|" else term / len(positives))
        return total / q.shape[0]

    return one(a, b) if bug == "one direction" else (one(a, b) + one(b, a)) / 2


def ref_dcl(a, b, scale, bias=None, *, labels=None, bug=None):
    """-s_ii + log sum_{j in N(i)} exp(s_ij), both directions; 0 for a row without negatives."""
    lab = None if labels is None else labels.tolist()

    def one(q, k):
        total = 0 * scale  # in the graph even when no row contributes
        for i in range(q.shape[0]):
            negs = _negatives(i, q.shape[0], lab)
            if bug == "positive in denominator":
                negs = negs + [i]
            if negs:
                sign = 1 if bug == "flipped positive" else -1
                den = sum(torch.exp(_sim(q, k, i, j, scale, bias)) for j in negs)
                total = total + sign * _sim(q, k, i, i, scale, bias) + torch.log(den)
        return total / q.shape[0]

    return (one(a, b) + one(b, a)) / 2


def ref_hcl(a, b, scale, bias=None, *, labels=None, beta=1.0, tau_plus=0.0, bug=None):
    """The estimator of Robinson et al.'s code (github.com/joshr17/HCL), exp(cos/t) -> exp(s)."""
    lab = None if labels is None else labels.tolist()
    if bug == "flipped beta":
        beta = -beta
    lowest = -scale + (0.0 if bias is None else bias)

    def one(q, k):
        total = 0 * scale  # in the graph even when no row contributes
        for i in range(q.shape[0]):
            negs = _negatives(i, q.shape[0], lab)
            if not negs:
                continue
            pos = torch.exp(_sim(q, k, i, i, scale, bias))
            neg = torch.stack([torch.exp(_sim(q, k, i, j, scale, bias)) for j in negs])
            n = len(negs)
            imp = (beta * neg.log()).exp()
            reweight_neg = (imp * neg).sum() / imp.mean()
            tau_term = tau_plus * n * pos * (-1 if bug == "flipped tau_plus" else 1)
            ng = (-tau_term + reweight_neg) / (1 - tau_plus)
            ng = torch.maximum(ng, n * torch.exp(lowest))
            total = total - torch.log(pos / (pos + ng))
        return total / q.shape[0]

    return (one(a, b) + one(b, a)) / 2


def ref_mochi(a, b, scale, bias=None, *, labels=None, n_hard=16, s1=16, s2=8, mix_query_max=0.5, seed=0, bug=None):
    """InfoNCE whose denominator also holds, per row, s1 mixes of two of its n_hard hardest negatives
    and s2 mixes of the (detached) query with one (weight < mix_query_max on the query), detached.
    Random numbers drawn as align.objectives.variants.MoCHiLoss documents, from a generator seeded ``seed``."""
    lab = None if labels is None else labels.tolist()
    g = torch.Generator().manual_seed(seed)
    draws = [torch.rand(a.shape[0], 3 * s1 + 2 * s2, dtype=torch.float64, generator=g) for _ in range(2)]

    def one(q, k, u):
        total = 0 * scale  # in the graph even when no row contributes
        for i in range(q.shape[0]):
            negs = _negatives(i, q.shape[0], lab)
            terms = [_sim(q, k, i, j, scale, bias) for j in [i] + negs]
            hard = sorted(negs, key=lambda j: -float(q[i].detach() @ k[j].detach()))[:n_hard]
            n = len(hard)
            at = lambda x: hard[min(int(x * n), n - 1)]  # noqa: E731
            for m in range(s1 if n else 0):
                alpha = u[i, 2 * s1 + m].item()
                h = alpha * k[at(u[i, m])].detach() + (1 - alpha) * k[at(u[i, s1 + m])].detach()
                terms.append(scale * (q[i] @ (h / h.norm())) + (0.0 if bias is None else bias))
            for m in range(s2 if n and bug != "no query mixes" else 0):
                beta = mix_query_max * u[i, 3 * s1 + s2 + m].item()
                if bug == "query weight swapped":
                    beta = 1 - beta
                h = beta * q[i].detach() + (1 - beta) * k[at(u[i, 3 * s1 + m])].detach()
                terms.append(scale * (q[i] @ (h / h.norm())) + (0.0 if bias is None else bias))
            total = total - terms[0] + torch.log(sum(torch.exp(t) for t in terms))
        return total / q.shape[0]

    return (one(a, b, draws[0]) + one(b, a, draws[1])) / 2


# name -> (make our loss, reference with the same hyper-parameters, label kinds to test)
CASES = {
    "multi_positive": (lambda s: MultiPositiveLoss(), ref_multi_positive, ["distinct", "repeats", "same"]),
    "multi_positive-in": (
        lambda s: MultiPositiveLoss(variant="in"),
        lambda *x, **kw: ref_multi_positive(*x, variant="in", **kw),
        ["distinct", "repeats", "same"],
    ),
    "dcl": (lambda s: DecoupledContrastiveLoss(), ref_dcl, [None, "repeats", "same"]),
    "hcl": (lambda s: HardNegativeLoss(), ref_hcl, [None, "repeats", "same"]),
    "hcl-debiased": (
        lambda s: HardNegativeLoss(beta=0.5, tau_plus=0.1),
        lambda *x, **kw: ref_hcl(*x, beta=0.5, tau_plus=0.1, **kw),
        [None, "repeats"],
    ),
    "mochi": (
        lambda s: MoCHiLoss(generator=torch.Generator().manual_seed(s)),
        lambda *x, seed, **kw: ref_mochi(*x, seed=seed, **kw),
        [None, "repeats", "same"],
    ),
    "mochi-few-hard": (
        lambda s: MoCHiLoss(n_hard=3, s1=4, s2=3, mix_query_max=0.3, generator=torch.Generator().manual_seed(s)),
        lambda *x, seed, **kw: ref_mochi(*x, n_hard=3, s1=4, s2=3, mix_query_max=0.3, seed=seed, **kw),
        [None, "repeats"],
    ),
}


def _reference(name, seed):
    ref = CASES[name][1]
    if name.startswith("mochi"):
        return lambda *x, **kw: ref(*x, seed=seed, **kw)
    return ref


PARITY = [(name, kind) for name, case in CASES.items() for kind in case[2]]


@pytest.mark.parametrize("batch", [1, 2, 7, 12])
@pytest.mark.parametrize("name,label_kind", PARITY)
def test_matches_reference(name, label_kind, batch):
    seed = 100 * batch + len(name) + len(str(label_kind))
    labels = _labels(batch, label_kind, seed)
    for bias in (False, True):
        leaves = _inputs(batch, 8, seed + int(bias), bias)
        v, g = _value_and_grads(CASES[name][0](seed), *leaves, labels)
        v_ref, g_ref = _value_and_grads(_reference(name, seed), *leaves, labels)
        assert v.shape == () and v.dtype == torch.float64 and torch.isfinite(v_ref)
        _close(v, v_ref, f"{name} value", VALUE_ATOL)
        for what, x, y in zip(["d/d a", "d/d b", "d/d log_scale", "d/d bias"], g, g_ref):
            _close(x, y, f"{name} {what}", GRAD_ATOL)
        if batch > 2 and label_kind != "same":  # the comparison has teeth
            assert v_ref.abs() > 1e-3 and all(x.abs().max() > 1e-6 for x in g_ref[:3])


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name):
    """Finite differences in float64. MoCHi's synthetic negatives are detached on purpose (their
    dependence on a, b is not differentiated), so for it only log_scale and bias are checked."""
    seed = 3
    a, b, log_scale, bias = _inputs(4, 3, seed, bias=True)
    labels = torch.tensor([0, 1, 0, 2]) if name != "hcl-debiased" else None

    def fn(*leaves):
        x, y, s, c = leaves if len(leaves) == 4 else (a.detach(), b.detach(), *leaves)
        return CASES[name][0](seed)(x, y, s.exp(), c, labels=labels)

    leaves = (log_scale, bias) if name.startswith("mochi") else (a, b, log_scale, bias)
    assert torch.autograd.gradcheck(fn, leaves)
    if name.startswith("mochi"):
        no_mix = lambda *x: MoCHiLoss(s1=0, s2=0)(*x[:2], x[2].exp(), x[3], labels=labels)  # noqa: E731
        assert torch.autograd.gradcheck(no_mix, (a, b, log_scale, bias))


# --- reductions -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [2, 9])
@pytest.mark.parametrize(
    "name,ours",
    [
        ("multi_positive with distinct labels", MultiPositiveLoss()),
        ("hcl with beta=0, tau_plus=0 (InfoNCE with the positive in the denominator)", HardNegativeLoss(beta=0.0)),
        ("mochi with s1=s2=0", MoCHiLoss(s1=0, s2=0)),
        ("mochi with n_hard=0", MoCHiLoss(n_hard=0)),
    ],
)
def test_reduces_to_open_clip(name, ours, batch):
    a, b, log_scale, bias = _inputs(batch, 16, seed=batch, bias=True)
    labels = _labels(batch, "distinct", seed=1)
    for c in (None, bias):  # open_clip's ClipLoss takes no bias; softmax ignores a constant one
        v, g = _value_and_grads(ours, a, b, log_scale, c, labels)
        v_ref, g_ref = _value_and_grads(
            lambda x, y, s, _c, labels: _open_clip_loss()(x, y, s), a, b, log_scale, None, None
        )
        _close(v, v_ref, f"{name} value", VALUE_ATOL)
        for what, x, y in zip(["d/d a", "d/d b", "d/d log_scale"], g, g_ref):
            _close(x, y, f"{name} {what}", GRAD_ATOL)
    assert v_ref > 0


def test_bias_cancels():
    a, b, log_scale, bias = _inputs(6, 8, seed=11, bias=True)
    labels = _labels(6, "repeats", 11)
    for name, (make, _, _) in CASES.items():
        with_bias = make(1)(a, b, log_scale.exp(), bias, labels=labels)
        without = make(1)(a, b, log_scale.exp(), None, labels=labels)
        _close(with_bias, without, f"{name} bias", VALUE_ATOL)
        (grad,) = torch.autograd.grad(with_bias, [bias])
        assert grad.abs() < 1e-10, name


def test_scale_of_shape_one():
    """The model's logit_scale is a [1] parameter; the losses still return a 0-d tensor."""
    a, b, log_scale, bias = _inputs(5, 8, seed=2, bias=True)
    labels = _labels(5, "repeats", 2)
    for name, (make, _, _) in CASES.items():
        v = make(0)(a, b, log_scale.exp().reshape(1), bias.reshape(1), labels=labels)
        assert v.shape == (), name
        _close(v, make(0)(a, b, log_scale.exp(), bias, labels=labels), name, VALUE_ATOL)


# --- the comparisons are sensitive: a wrong sign or a missing term fails -----------------------


@pytest.mark.parametrize(
    "name,bug",
    [
        ("multi_positive", "one direction"),
        ("multi_positive", "no 1/|P|"),
        ("multi_positive-in", "no 1/|P|"),
        ("dcl", "positive in denominator"),
        ("dcl", "flipped positive"),
        ("hcl", "flipped beta"),
        ("hcl-debiased", "flipped tau_plus"),
        ("mochi", "no query mixes"),
        ("mochi", "query weight swapped"),
    ],
)
def test_perturbed_reference_fails(name, bug):
    seed = 21
    a, b, log_scale, bias = _inputs(10, 8, seed, bias=True)
    labels = _labels(10, "repeats", seed)
    ours, ours_grads = _value_and_grads(CASES[name][0](seed), a, b, log_scale, bias, labels)
    ref = _reference(name, seed)
    exact = _value_and_grads(ref, a, b, log_scale, bias, labels)[0]
    broken = _value_and_grads(lambda *x, **kw: ref(*x, bug=bug, **kw), a, b, log_scale, bias, labels)[0]
    _close(ours, exact, "unperturbed", VALUE_ATOL)
    assert (ours - broken).abs() > MARGIN, f"{bug}: {ours.item()} vs {broken.item()}"


# --- MoCHi's synthetic negatives ---------------------------------------------------------------


def test_mochi_synthetic_negatives():
    a, b, log_scale, _ = _inputs(12, 8, seed=5, bias=False)
    loss = MoCHiLoss(n_hard=4, s1=6, s2=5, generator=torch.Generator().manual_seed(0))
    logits = log_scale.exp() * a @ b.T
    negative = ~torch.eye(12, dtype=torch.bool)
    h, valid = loss.synthesize(a, b, logits, negative, offset=0)
    assert h.shape == (12, 11, 8) and valid.all()
    assert not h.requires_grad and h.grad_fn is None  # detached
    _close(h.norm(dim=-1), torch.ones(12, 11, dtype=h.dtype), "unit norm", 1e-12)
    # s2 query mixes lean towards the query less than half: closer to their hard negative
    hard = logits.detach().masked_fill(~negative, float("-inf")).topk(4, dim=1).indices
    nearest_hard = (h[:, 6:] @ b.detach().T).gather(2, hard[:, None, :].expand(12, 5, 4)).max(-1).values
    assert (nearest_hard > (h[:, 6:] * a.detach()[:, None]).sum(-1)).all()
    # the s1 mixes lie in the span of two hard negatives of their row
    for i in range(12):
        basis = b.detach()[hard[i]]
        coef = torch.linalg.lstsq(basis.T, h[i, :6].T).solution
        _close(basis.T @ coef, h[i, :6].T, "s1 mixes of hard negatives", 1e-10)
    # adding negatives raises the loss, above CLIP's; without labels they are all valid
    clip = MoCHiLoss(s1=0, s2=0)(a, b, log_scale.exp())
    more = loss(a, b, log_scale.exp())
    assert more > clip + 1e-3
    # a row with no negative gets no synthetic negatives
    _, valid = loss.synthesize(a, b, logits, torch.zeros(12, 12, dtype=torch.bool), offset=0)
    assert not valid.any()


def test_mochi_randomness():
    """Same-seeded generators give the same loss; the global RNG is used without one."""
    a, b, log_scale, _ = _inputs(8, 8, seed=6, bias=False)
    run = lambda loss: loss(a, b, log_scale.exp()).item()  # noqa: E731
    assert run(MoCHiLoss(generator=torch.Generator().manual_seed(3))) == run(
        MoCHiLoss(generator=torch.Generator().manual_seed(3))
    )
    assert run(MoCHiLoss(generator=torch.Generator().manual_seed(3))) != run(
        MoCHiLoss(generator=torch.Generator().manual_seed(4))
    )
    torch.manual_seed(9)
    first = run(MoCHiLoss())
    torch.manual_seed(9)
    assert run(MoCHiLoss()) == first


# --- arguments and registry -----------------------------------------------------------------------


def test_arguments_and_registry():
    a, b, log_scale, _ = _inputs(4, 8, seed=1, bias=False)
    with pytest.raises(ValueError, match="multi_positive needs labels"):
        MultiPositiveLoss()(a, b, log_scale.exp())
    with pytest.raises(ValueError, match="labels must have shape"):
        DecoupledContrastiveLoss()(a, b, log_scale.exp(), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="tau_plus"):
        HardNegativeLoss(tau_plus=1.0)
    with pytest.raises(ValueError, match="mochi"):
        MoCHiLoss(s1=-1)
    for name, cls in [
        ("multi_positive", MultiPositiveLoss),
        ("dcl", DecoupledContrastiveLoss),
        ("hcl", HardNegativeLoss),
        ("mochi", MoCHiLoss),
    ]:
        assert LOSSES.get(name) is cls
        built = factory.build_loss(name, local_loss=False, rank=1, world_size=2)
        assert type(built) is cls and built.local_loss is False and built.dist() == (1, 2)


# --- two processes (gloo): mean over processes = one process on the global batch ---------------

PER_PROCESS, DIM, WORLD = 5, 8, 2
DIST_CASES = {  # name -> (make(rank, world), labels?)
    "multi_positive-local": (lambda r, w: MultiPositiveLoss(True, r, w), True),
    "multi_positive-global": (lambda r, w: MultiPositiveLoss(False, r, w), True),
    "dcl": (lambda r, w: DecoupledContrastiveLoss(True, r, w), False),
    "dcl-labels": (lambda r, w: DecoupledContrastiveLoss(True, r, w), True),
    "hcl": (lambda r, w: HardNegativeLoss(True, r, w, beta=0.5, tau_plus=0.1), True),
    "mochi": (
        lambda r, w: MoCHiLoss(True, r, w, n_hard=4, s1=3, s2=2, generator=torch.Generator().manual_seed(8)),
        False,
    ),
    "mochi-labels-global": (
        lambda r, w: MoCHiLoss(False, r, w, n_hard=4, s1=3, s2=2, generator=torch.Generator().manual_seed(8)),
        True,
    ),
}


def _global_batch():
    a, b, log_scale, bias = (t.detach() for t in _inputs(WORLD * PER_PROCESS, DIM, seed=42, bias=True))
    return a, b, log_scale, bias, _labels(WORLD * PER_PROCESS, "repeats", seed=42)


def _worker(rank: int, world: int) -> dict:
    a, b, log_scale, bias, labels = _global_batch()
    rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
    results = {}
    for case, (make, with_labels) in DIST_CASES.items():
        leaves = [t.clone().requires_grad_() for t in (a[rows], b[rows], log_scale, bias)]
        results[case] = _value_and_grads(make(rank, world), *leaves, labels[rows] if with_labels else None)
    return results


def test_two_processes_match_one(tmp_path):
    """Per process: its rows against the gathered batch. The mean of the values and of the
    temperature / bias gradients is the global one; each process's gradient w.r.t. its own features
    is the gradient of the *sum* of the processes' losses (the gather's backward sums them), i.e.
    world_size times the global loss's gradient for those rows, which DDP's averaging undoes."""
    per_rank = run_world(__file__, WORLD, tmp_path)
    a, b, log_scale, bias, labels = _global_batch()
    for case, (make, with_labels) in DIST_CASES.items():
        leaves = [t.clone().requires_grad_() for t in (a, b, log_scale, bias)]
        value, grads = _value_and_grads(make(0, 1), *leaves, labels if with_labels else None)
        assert value.abs() > 1e-3 and grads[0].abs().max() > 1e-6
        _close(sum(r[case][0] for r in per_rank) / WORLD, value, f"{case} mean value", VALUE_ATOL)
        for k, what in [(0, "d/d a"), (1, "d/d b")]:
            summed = torch.cat([r[case][1][k] for r in per_rank]) / WORLD
            _close(summed, grads[k], f"{case} {what}", GRAD_ATOL)
        for k, what in [(2, "d/d log_scale"), (3, "d/d bias")]:
            _close(sum(r[case][1][k] for r in per_rank) / WORLD, grads[k], f"{case} {what}", GRAD_ATOL)


if __name__ == "__main__":  # the 2-process test's worker
    worker_main(_worker)
