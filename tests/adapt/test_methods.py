"""The training-free and probe methods on real features (scikit-learn's digits pixels, unit-norm)
with a zero-shot classifier that knows nothing (random class vectors) or a good one (class means of
rows the shots never come from): the shots must lift the first, and not spoil the second."""

import pytest
import torch
import torch.nn.functional as F

from align.adapt.methods import (
    Task,
    choose_alpha_beta,
    linear_probe,
    loo_logits,
    tip_adapter,
    tip_adapter_f,
    zs_probe,
)
from align.adapt.shots import draw_shots

NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)
    y = torch.as_tensor(y)
    return x[:1000], y[:1000], x[1000:1400], y[1000:1400], x[1400:], y[1400:]  # pool, test, "prompt" rows


def task(zeroshot, steps=None) -> Task:
    return Task(None, "image", "text", NAMES, ["{}"], zeroshot, 100.0, steps or {})


def acc(head, x, y) -> float:
    with torch.no_grad():
        return float((head.logits(x).argmax(1) == y).float().mean())


def shots(pool_y, k, seed=0):
    return torch.as_tensor(draw_shots(pool_y.numpy(), range(10), k, seed))


def test_tip_adapter_lifts_a_blind_zero_shot_and_keeps_a_good_one(digits):
    px, py, tx, ty, qx, qy = digits
    blind = F.normalize(torch.randn(10, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows = shots(py, 8)
    head = tip_adapter(task(blind), px[rows], py[rows], 0)
    assert head.alpha > 0 and head.info["loo_accuracy"] > 0.8
    zs = task(blind)
    assert acc(head, tx, ty) > 0.75 > 0.3 > float(((tx @ zs.zeroshot.T).argmax(1) == ty).float().mean())
    good = F.normalize(torch.stack([qx[qy == c].mean(0) for c in range(10)]), dim=-1)
    kept = tip_adapter(task(good), px[rows], py[rows], 0)
    zs_acc = float(((tx @ good.T).argmax(1) == ty).float().mean())
    assert acc(kept, tx, ty) >= zs_acc - 0.01


def test_leave_one_out_keeps_each_shot_out_of_its_own_cache(digits):
    px, py, _, _, _, _ = digits
    blind = F.normalize(torch.randn(10, 64, generator=torch.Generator().manual_seed(1)), dim=-1)
    rows = shots(py, 1)  # one shot per class: without itself, a shot's class has no cache entry
    alpha, beta, record = choose_alpha_beta(task(blind), px[rows], py[rows])
    zero_shot = float(((px[rows] @ blind.T).argmax(1) == py[rows]).float().mean())
    assert record["loo_accuracy"] <= max(zero_shot, 0.1) + 1e-6  # (with itself in the cache it would be 1.0)


def test_tip_adapter_f_learns_its_keys(digits):
    px, py, tx, ty, _, _ = digits
    blind = F.normalize(torch.randn(10, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows = shots(py, 4)
    t = task(blind, {"tip-adapter-f": 30})
    base, tuned = tip_adapter(t, px[rows], py[rows], 0), tip_adapter_f(t, px[rows], py[rows], 0)
    assert not torch.allclose(tuned.keys, base.keys)
    with torch.no_grad():  # what it minimises: each shot against the other shots' keys
        loss = lambda h: float(F.cross_entropy(loo_logits(h, px[rows]), py[rows]))
        assert loss(tuned) < loss(base)


def test_probes(digits):
    px, py, tx, ty, qx, qy = digits
    good = F.normalize(torch.stack([qx[qy == c].mean(0) for c in range(10)]), dim=-1)
    one, many = shots(py, 1), shots(py, 16)
    lp1, lp16 = linear_probe(task(good), px[one], py[one], 0), linear_probe(task(good), px[many], py[many], 0)
    assert lp1.info["cv"] is None and lp16.info["cv"]["folds"] == 5
    assert acc(lp16, tx, ty) > acc(lp1, tx, ty) and acc(lp16, tx, ty) > 0.85
    zp1 = zs_probe(task(good), px[one], py[one], 0)  # one shot: lambda 1, near the zero-shot classifier
    assert zp1.info["lambda"] == 1.0 and acc(zp1, tx, ty) > acc(lp1, tx, ty)
    zp16 = zs_probe(task(good), px[many], py[many], 0)
    assert zp16.info["lambda"] in zp16.info["cv"]["grid"] and acc(zp16, tx, ty) > 0.85
