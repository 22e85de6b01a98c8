"""align.objectives.multiway against references written here from the papers' formulas, with explicit
loops over candidates (float64): Symile (both negative samplings), GRAM, their reductions and
properties, a higher-order toy problem, Matryoshka, per-pair temperatures, and a 2-process gloo
gather. Run as a script, this file is the worker of the 2-process test (see ``_worker``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip import loss as oc_loss

from align.objectives import factory, losses
from align.objectives.multiway import GramLoss, MatryoshkaLoss, SymileLoss, gram_volume, mip, truncate, volume_matrix
from align.registry import LOSSES
from tests.support.gloo_world import run_world, worker_main
from tests.support.losses import tuple_inputs, tuple_value_and_grads

REPO = Path(__file__).resolve().parents[2]
VALUE_ATOL, GRAD_ATOL = 1e-10, 1e-8

pytestmark = pytest.mark.usefixtures("one_thread")


def _perms(m: int, n: int, seed: int) -> torch.Tensor:
    return SymileLoss(generator=torch.Generator().manual_seed(seed)).sample_perms(n, m)


def _assert_same(ours, ref, what: str) -> None:
    (v_ours, g_ours), (v_ref, g_ref) = ours, ref
    torch.testing.assert_close(v_ours, v_ref, rtol=0, atol=VALUE_ATOL, msg=lambda m: f"{what} value: {m}")
    for k, (go, gr) in enumerate(zip(g_ours, g_ref)):
        torch.testing.assert_close(go, gr, rtol=0, atol=GRAD_ATOL, msg=lambda m: f"{what} grad {k}: {m}")
    assert all(g.abs().max() > 1e-6 for g in g_ref), f"{what}: the check needs non-zero gradients"


def _differs(ours, ref, what: str) -> None:
    """A perturbed reference misses by orders of magnitude more than the tolerances: the checks bite."""
    assert (ours[0] - ref[0]).abs() > 1e4 * VALUE_ATOL, f"{what}: a perturbed reference must not match"
    assert max((go - gr).abs().max() for go, gr in zip(ours[1], ref[1])) > 1e4 * GRAD_ATOL, what


# --- references: the papers' formulas, one candidate at a time -------------------------------


def ref_mip(vectors) -> torch.Tensor:
    """MIP(x_1..x_M) = sum_d prod_m x_m[d]."""
    return torch.stack(list(vectors)).prod(dim=0).sum()


def _ce(logits: list[torch.Tensor], positive: int) -> torch.Tensor:
    logits = torch.stack(logits)
    return torch.logsumexp(logits, 0) - logits[positive]


def ref_symile(xs, scale, perms=None, sign: float = 1.0, insert_positive: bool = True, anchors=None):
    """Each modality a as anchor; row i's candidates are tuples of the other modalities: with
    ``perms`` (O(N)) candidate j != i is (x_k[perms[a, k, j]])_k and candidate i is the positive;
    without (O(N^2)) every combination of rows. Loss = mean over anchors of mean over rows of CE."""
    m, n = len(xs), xs[0].shape[0]
    per_anchor = []
    for a in range(m) if anchors is None else anchors:
        others = [k for k in range(m) if k != a]
        rows = []
        for i in range(n):
            if perms is not None:
                tuples = [
                    [xs[k][i if (j == i and insert_positive) else perms[a, k, j]] for k in others] for j in range(n)
                ]
                positive = i
            else:
                combos = list(itertools.product(range(n), repeat=m - 1))
                tuples = [[xs[k][j] for k, j in zip(others, combo)] for combo in combos]
                positive = combos.index((i,) * (m - 1))
            logits = [sign * scale * ref_mip([xs[a][i], *t]) for t in tuples]
            rows.append(_ce(logits, positive))
        per_anchor.append(torch.stack(rows).mean())
    return torch.stack(per_anchor).mean()


def ref_det(g: torch.Tensor) -> torch.Tensor:
    """Leibniz: det G = sum over permutations s of sign(s) prod_r G[r, s(r)]."""
    m, total = g.shape[0], 0
    for perm in itertools.permutations(range(m)):
        inversions = sum(perm[p] > perm[q] for p in range(m) for q in range(p + 1, m))
        term = (-1) ** inversions
        for r in range(m):
            term = term * g[r, perm[r]]
        total = total + term
    return total


def ref_volume(vectors) -> torch.Tensor:
    """Vol = sqrt(det G), G[r, c] = <v_r, v_c>."""
    m = len(vectors)
    g = torch.stack([torch.stack([vectors[r] @ vectors[c] for c in range(m)]) for r in range(m)])
    return ref_det(g).sqrt()


def ref_gram(xs, scale, anchor: int = 0, sign: float = -1.0, both: bool = True):
    """CE over -scale * Vol(anchor i, tuple j) (anchor -> rest) and over -scale * Vol(anchor j, tuple i)
    (rest -> anchor), averaged."""
    n = xs[0].shape[0]
    others = [k for k in range(len(xs)) if k != anchor]
    vol = [[ref_volume([xs[anchor][i], *[xs[k][j] for k in others]]) for j in range(n)] for i in range(n)]
    a2r = torch.stack([_ce([sign * scale * vol[i][j] for j in range(n)], i) for i in range(n)]).mean()
    r2a = torch.stack([_ce([sign * scale * vol[j][i] for j in range(n)], i) for i in range(n)]).mean()
    return (a2r + r2a) / 2 if both else a2r


# --- Symile -------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,batch,dim", [(3, 1, 8), (3, 5, 16), (3, 8, 8), (4, 4, 16), (4, 7, 8)])
def test_symile_n_matches_reference(m, batch, dim):
    xs, log_scale = tuple_inputs(m, batch, dim, seed=100 * m + batch)
    perms = _perms(m, batch, seed=batch)
    ours = tuple_value_and_grads(lambda x, s: SymileLoss("n", rank=0, world_size=1)(x, s, perms), xs, log_scale)
    ref = tuple_value_and_grads(lambda x, s: ref_symile(x, s, perms), xs, log_scale)
    if batch == 1:  # one candidate: the loss is identically 0
        assert ours[0] == 0
        return
    _assert_same(ours, ref, f"symile n M={m} B={batch}")
    _differs(ours, tuple_value_and_grads(lambda x, s: ref_symile(x, s, perms, sign=-1.0), xs, log_scale), "sign")
    _differs(
        ours,
        tuple_value_and_grads(lambda x, s: ref_symile(x, s, perms, insert_positive=False), xs, log_scale),
        "positive not inserted",
    )
    _differs(
        ours,
        tuple_value_and_grads(lambda x, s: ref_symile(x, s, perms, anchors=range(m - 1)), xs, log_scale),
        "an anchor dropped",
    )


@pytest.mark.parametrize("m,batch,dim", [(3, 3, 8), (3, 6, 16), (4, 3, 8), (4, 4, 16)])
def test_symile_n_squared_matches_reference(m, batch, dim):
    xs, log_scale = tuple_inputs(m, batch, dim, seed=200 * m + batch)
    ours = tuple_value_and_grads(SymileLoss("n_squared", rank=0, world_size=1), xs, log_scale)
    ref = tuple_value_and_grads(ref_symile, xs, log_scale)
    _assert_same(ours, ref, f"symile n_squared M={m} B={batch}")
    _differs(ours, tuple_value_and_grads(lambda x, s: ref_symile(x, s, sign=-1.0), xs, log_scale), "sign")


def test_symile_random_perms_come_from_the_generator():
    xs, log_scale = tuple_inputs(3, 6, 8, seed=1)
    seeded = SymileLoss(generator=torch.Generator().manual_seed(7))
    v1 = seeded(xs, log_scale.exp())
    again = SymileLoss(generator=torch.Generator().manual_seed(7))(xs, log_scale.exp())
    torch.testing.assert_close(v1, again, rtol=0, atol=0)
    torch.testing.assert_close(v1, ref_symile(xs, log_scale.exp(), _perms(3, 6, seed=7)), rtol=0, atol=VALUE_ATOL)
    perms = seeded.sample_perms(6, 3)
    assert all(sorted(perms[a, k].tolist()) == list(range(6)) for a in range(3) for k in range(3))


def test_symile_needs_three_modalities():
    xs, log_scale = tuple_inputs(2, 4, 8, seed=0)
    with pytest.raises(ValueError, match="Symile needs three or more modalities; for two use clip"):
        SymileLoss()(xs, log_scale.exp())
    with pytest.raises(ValueError, match="negative_sampling"):
        SymileLoss("n_cubed")


def test_mip_of_two_is_the_dot_product_and_symmetric():
    (x, y, z), _ = tuple_inputs(3, 5, 16, seed=3)
    torch.testing.assert_close(mip(x, y), (x @ y.T).diagonal(), rtol=0, atol=1e-15)
    for perm in itertools.permutations((x, y, z)):
        torch.testing.assert_close(mip(*perm), mip(x, y, z), rtol=0, atol=1e-15)
    torch.testing.assert_close(mip(x[0], y[1], z[2]), ref_mip([x[0], y[1], z[2]]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("third", [0, 1, 2])
def test_symile_with_a_constant_modality_reduces_to_clip(third):
    """c = ones/sqrt(d) on every row makes MIP(x, y, c) = x.y / sqrt(d). With the O(N) sampling and
    identity permutations the x- and y-anchored terms are exactly open_clip's two CLIP directions
    at scale s' = s/sqrt(d); the c-anchored row ranks v_j = s' x_j.y_j, the same for every row:
        L = 2/3 ClipLoss(x, y, s') + 1/3 (logsumexp(v) - mean(v)).
    With O(N^2) every (y_j, c_k) repeats x_i.y_j N times (+ log N), and c's row spans all (j, k):
        L = 1/3 (2 ClipLoss(x, y, s') + 2 log N + logsumexp(s' X Y^T) - mean_i s' x_i.y_i)."""
    batch, dim = 6, 16
    (x, y), log_scale = tuple_inputs(2, batch, dim, seed=11)
    c = torch.full((batch, dim), dim**-0.5, dtype=torch.float64)
    xs = [x, y]
    xs.insert(third, c)
    s = log_scale.exp()
    s1 = s / math.sqrt(dim)
    clip = oc_loss.ClipLoss()(x, y, s1)
    v = s1 * (x * y).sum(-1)
    identity = torch.arange(batch).repeat(3, 3, 1)
    expected_n = 2 / 3 * clip + (torch.logsumexp(v, 0) - v.mean()) / 3
    torch.testing.assert_close(SymileLoss("n")(xs, s, identity), expected_n, rtol=0, atol=VALUE_ATOL)
    expected_n2 = (2 * clip + 2 * math.log(batch) + torch.logsumexp((s1 * x @ y.T).flatten(), 0) - v.mean()) / 3
    torch.testing.assert_close(SymileLoss("n_squared")(xs, s), expected_n2, rtol=0, atol=VALUE_ATOL)


def test_symile_sees_a_higher_order_dependency_pairwise_scores_cannot():
    """x1, x2 uniform on Z_K, x3 = (x1 + x2) mod K: every pair is independent, the triple is not.
    Embeddings on the K x K grid (p, q): e1(a) = 1[p = a], e2(b) = 1[q = b], e3(c) = 1[p+q = c mod K],
    each / sqrt(K). Then MIP(e1(a), e2(b), e3(c)) = K^-1.5 1[a + b = c] while every pairwise dot
    product is 1/K whatever the inputs: Symile's score retrieves x3 always, any pairwise score
    (or sum of them) ties all K candidates, i.e. chance (1/K)."""
    k = 5
    p, q = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    p, q = p.flatten(), q.flatten()

    def embed(values, grid):
        return (grid[None, :] == values[:, None]).double() / math.sqrt(k)

    a, b = p.clone(), q.clone()  # every (x1, x2) once: the uniform distribution, deterministically
    c = (a + b) % k
    e1, e2, e3 = embed(a, p), embed(b, q), embed(c, (p + q) % k)
    cands = embed(torch.arange(k), (p + q) % k)  # e3 of each of the K candidate values
    symile_scores = (e1 * e2) @ cands.T  # [K^2, K]: MIP(e1, e2, candidate)
    assert (symile_scores.argmax(1) == c).all()  # top-1 accuracy 1 vs chance 1/K
    true = symile_scores.gather(1, c[:, None]).squeeze(1)
    others = symile_scores.masked_fill(F.one_hot(c, k).bool(), -1).max(1).values
    assert (true - others).min() > 0.08  # K^-1.5 = 0.089 above every wrong candidate
    for score in (e1 @ cands.T, e2 @ cands.T, e1 @ cands.T + e2 @ cands.T, (e1 @ e2.T).diagonal()[:, None]):
        assert torch.allclose(score, score.flatten()[0].expand_as(score), atol=1e-15)  # one value: no signal
    # the losses at these embeddings (s = 100): pairwise CLIP sits at its chance level log B; Symile's
    # O(N^2) loss (B^2 = K^4 candidates, chance log K^4) at its floor log K^3, the number of
    # candidates whose triple satisfies the relation (the batch holds each value K times)
    scale = torch.tensor(100.0, dtype=torch.float64)
    pairwise = (oc_loss.ClipLoss()(e1, e3, scale) + oc_loss.ClipLoss()(e2, e3, scale)) / 2
    assert math.isclose(pairwise.item(), math.log(k**2), rel_tol=1e-12)
    assert math.isclose(SymileLoss("n_squared")([e1, e2, e3], scale).item(), math.log(k**3), abs_tol=1e-3)


# --- GRAM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,batch,dim,anchor", [(3, 1, 8, 0), (3, 5, 16, 0), (3, 7, 8, 2), (4, 4, 16, 1), (4, 6, 8, 3)])
def test_gram_matches_reference(m, batch, dim, anchor):
    xs, log_scale = tuple_inputs(m, batch, dim, seed=300 * m + batch)
    ours = tuple_value_and_grads(lambda x, s: GramLoss(rank=0, world_size=1)(x, s, anchor=anchor), xs, log_scale)
    ref = tuple_value_and_grads(lambda x, s: ref_gram(x, s, anchor), xs, log_scale)
    if batch == 1:
        assert ours[0] == 0
        return
    _assert_same(ours, ref, f"gram M={m} B={batch} anchor={anchor}")
    _differs(ours, tuple_value_and_grads(lambda x, s: ref_gram(x, s, anchor, sign=1.0), xs, log_scale), "sign")
    _differs(
        ours, tuple_value_and_grads(lambda x, s: ref_gram(x, s, anchor, both=False), xs, log_scale), "one direction"
    )
    _differs(ours, tuple_value_and_grads(lambda x, s: ref_gram(x, s, (anchor + 1) % m), xs, log_scale), "other anchor")


def test_gram_label_smoothing_is_the_official_option():
    xs, log_scale = tuple_inputs(3, 5, 8, seed=5)
    s = log_scale.exp()
    vol = volume_matrix(xs[0], xs[1:])
    labels = torch.arange(5)
    expected = (
        F.cross_entropy(-s * vol, labels, label_smoothing=0.1)
        + F.cross_entropy(-s * vol.T, labels, label_smoothing=0.1)
    ) / 2
    torch.testing.assert_close(GramLoss(label_smoothing=0.1)(xs, s), expected, rtol=0, atol=1e-12)


def test_gram_volume_properties():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(4, 16, generator=g, dtype=torch.float64), dim=-1)
    assert gram_volume(v[:1].expand(3, 16)).item() < 2e-6  # identical vectors: sqrt(eps)
    assert gram_volume(v[:1].expand(3, 16), eps=0.0).item() < 1e-7
    q, _ = torch.linalg.qr(torch.randn(16, 4, generator=g, dtype=torch.float64))
    torch.testing.assert_close(gram_volume(q.T), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(gram_volume(q.T[:3]), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-10)
    for perm in itertools.permutations(range(4)):
        torch.testing.assert_close(gram_volume(v[list(perm)]), gram_volume(v), rtol=0, atol=1e-12)
    torch.testing.assert_close(gram_volume(v), ref_volume(list(v)), rtol=0, atol=1e-10)
    assert gram_volume(v[:3]) > gram_volume(torch.stack([v[0], v[1], F.normalize(v[0] + 0.1 * v[2], dim=0)]))
    # M = 2: sqrt(1 - cos^2) = |sin|, the same for a and -a
    cos = v[0] @ v[1]
    torch.testing.assert_close(gram_volume(v[:2]), (1 - cos**2).sqrt(), rtol=0, atol=1e-10)
    torch.testing.assert_close(gram_volume(torch.stack([-v[0], v[1]])), gram_volume(v[:2]), rtol=0, atol=1e-12)


def test_gram_degenerate_tuples_have_finite_gradients():
    """Near-identical positives (det ~ 0, or slightly negative by rounding) must not give NaN/inf."""
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(1)
        base = F.normalize(torch.randn(4, 32, generator=g, dtype=dtype), dim=-1)
        xs = [base.clone().requires_grad_() for _ in range(3)]  # every tuple's positive is degenerate
        value = GramLoss()(xs, torch.tensor(50.0, dtype=dtype))
        grads = torch.autograd.grad(value, xs)
        assert torch.isfinite(value) and all(torch.isfinite(gr).all() for gr in grads), dtype


def test_gram_two_modalities_is_clip_with_minus_sine_logits():
    """M = 2: V = sqrt(1 - (a b^T)^2) and V^T is the other direction, so GRAM is CLIP's symmetric
    cross-entropy with the logits s cos replaced by -s |sin|."""
    (a, b), log_scale = tuple_inputs(2, 6, 16, seed=9)
    s = log_scale.exp()
    cos = a @ b.T
    labels = torch.arange(6)
    sin = (1 - cos**2).sqrt()
    expected = (F.cross_entropy(-s * sin, labels) + F.cross_entropy(-s * sin.T, labels)) / 2
    torch.testing.assert_close(GramLoss()([a, b], s), expected, rtol=0, atol=1e-10)
    assert not torch.allclose(GramLoss()([a, b], s), oc_loss.ClipLoss()(a, b, s))


def test_gram_argument_checks():
    xs, log_scale = tuple_inputs(3, 4, 8, seed=0)
    with pytest.raises(ValueError, match="two or more"):
        GramLoss()(xs[:1], log_scale.exp())
    with pytest.raises(ValueError, match="anchor"):
        GramLoss()(xs, log_scale.exp(), anchor=3)
    with pytest.raises(ValueError, match="shape"):
        GramLoss()([xs[0], xs[1][:3]], log_scale.exp())
    torch.testing.assert_close(GramLoss()(xs, log_scale.exp(), anchor=-1), GramLoss()(xs, log_scale.exp(), anchor=2))
    torch.testing.assert_close(GramLoss(anchor=2)(xs, log_scale.exp()), GramLoss()(xs, log_scale.exp(), anchor=2))


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    perms = _perms(3, 3, seed=0)
    assert torch.autograd.gradcheck(lambda *t: SymileLoss("n")(list(t[:3]), t[3], perms), (*xs, s))
    assert torch.autograd.gradcheck(lambda *t: SymileLoss("n_squared")(list(t[:3]), t[3]), (*xs, s))
    assert torch.autograd.gradcheck(lambda *t: GramLoss()(list(t[:3]), t[3], anchor=1), (*xs, s))


def test_registered():
    assert LOSSES.get("symile") is SymileLoss and LOSSES.get("gram") is GramLoss
    built = factory.build_loss("gram", local_loss=True, rank=1, world_size=2)
    assert isinstance(built, GramLoss) and built.dist() == (1, 2)
    assert factory.build_loss("gram", anchor=2, label_smoothing=0.1).anchor == 2  # loss_options
    assert isinstance(factory.build_loss("symile", local_loss=True), SymileLoss)


# --- Matryoshka ---------------------------------------------------------------------------------


def test_matryoshka_is_the_weighted_sum_over_prefixes():
    (a, b), log_scale = tuple_inputs(2, 6, 16, seed=21)
    dims, weights = (2, 4, 8, 16), (1.0, 0.5, 2.0, 1.0)
    inner = losses.ClipLoss(rank=0, world_size=1)

    def reference(xs, s, w=weights):
        return sum(
            wi * oc_loss.ClipLoss()(F.normalize(xs[0][:, :m], dim=-1), F.normalize(xs[1][:, :m], dim=-1), s)
            for m, wi in zip(dims, w)
        )

    ours = tuple_value_and_grads(lambda xs, s: MatryoshkaLoss(inner, dims, weights)(xs[0], xs[1], s), [a, b], log_scale)
    ref = tuple_value_and_grads(reference, [a, b], log_scale)
    _assert_same(ours, ref, "matryoshka")
    assert (ours[1][0] != 0).all() and (ours[1][1] != 0).all()  # every coordinate gets a gradient
    unit = MatryoshkaLoss(inner, dims)(a, b, log_scale.exp())
    torch.testing.assert_close(unit, reference([a, b], log_scale.exp(), (1,) * 4), rtol=0, atol=VALUE_ATOL)
    mean = MatryoshkaLoss(inner, dims, weights, mean=True)(a, b, log_scale.exp())
    torch.testing.assert_close(mean, ours[0] / sum(weights), rtol=0, atol=VALUE_ATOL)
    sig = MatryoshkaLoss(losses.SigLipLoss(rank=0, world_size=1), (4, 16))  # logit_bias passes through
    bias = torch.tensor(-3.0, dtype=torch.float64)
    expected = sum(oc_loss.SigLipLoss()(truncate(a, m), truncate(b, m), log_scale.exp(), bias) for m in (4, 16))
    torch.testing.assert_close(sig(a, b, log_scale.exp(), bias), expected, rtol=0, atol=VALUE_ATOL)


def test_matryoshka_checks_and_truncate():
    (a, b), log_scale = tuple_inputs(2, 4, 16, seed=0)
    inner = losses.ClipLoss(rank=0, world_size=1)
    with pytest.raises(ValueError, match="exceeds the embedding dim 16"):
        MatryoshkaLoss(inner, (8, 32))(a, b, log_scale.exp())
    for dims in [(), (0, 4), (8, 4), (4, 4)]:
        with pytest.raises(ValueError, match="increasing"):
            MatryoshkaLoss(inner, dims)
    with pytest.raises(ValueError, match="weights"):
        MatryoshkaLoss(inner, (4, 8), weights=(1.0,))
    t = truncate(a * 3, 5)
    assert t.shape == (4, 5)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(t, F.normalize(a[:, :5], dim=-1), rtol=0, atol=1e-12)
    for bad in (0, 17):
        with pytest.raises(ValueError):
            truncate(a, bad)


# --- two processes (gloo): the mean over processes is the one-process loss of the global batch --

PER_PROCESS, DIM, WORLD = 4, 8, 2
DIST_CASES = {  # name -> (factory(rank, world), number of modalities)
    "symile-n": (lambda r, w: lambda xs, s: SymileLoss("n", rank=r, world_size=w)(xs, s, _perms(3, 8, 5)), 3),
    "symile-n2": (lambda r, w: SymileLoss("n_squared", rank=r, world_size=w), 3),
    "gram": (lambda r, w: lambda xs, s: GramLoss(rank=r, world_size=w)(xs, s, anchor=1), 3),
    "gram-4": (lambda r, w: GramLoss(rank=r, world_size=w), 4),
}


def _global(m: int):
    return tuple_inputs(m, PER_PROCESS * WORLD, DIM, seed=77 + m)


def _worker(rank: int, world: int) -> dict:
    results = {}
    for case, (make, m) in DIST_CASES.items():
        xs, log_scale = _global(m)
        rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
        local = [x.detach()[rows].clone().requires_grad_() for x in xs]
        results[case] = tuple_value_and_grads(make(rank, world), local, log_scale.detach().clone().requires_grad_())
    return results


def test_two_process_gather_matches_one_process(tmp_path):
    per_rank = run_world(__file__, WORLD, tmp_path)
    for case, (make, m) in DIST_CASES.items():
        xs, log_scale = _global(m)
        value, grads = tuple_value_and_grads(make(0, 1), xs, log_scale)
        mean = sum(r[case][0] for r in per_rank) / WORLD
        torch.testing.assert_close(mean, value, rtol=0, atol=VALUE_ATOL, msg=lambda msg: f"{case}: {msg}")
        # all_gather's backward sums every process's gradient of its own loss: WORLD x the mean's
        for rank, (_, local_grads) in enumerate(per_rank[i][case] for i in range(WORLD)):
            rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
            for k in range(m):
                torch.testing.assert_close(
                    local_grads[k],
                    WORLD * grads[k][rows],
                    rtol=0,
                    atol=GRAD_ATOL,
                    msg=lambda msg: f"{case} rank {rank} modality {k}: {msg}",
                )
        scale_grad = sum(r[case][1][m] for r in per_rank) / WORLD  # DDP averages the temperature's
        torch.testing.assert_close(scale_grad, grads[m], rtol=0, atol=GRAD_ATOL, msg=lambda msg: f"{case}: {msg}")


if __name__ == "__main__":  # the 2-process test's worker
    worker_main(_worker)
