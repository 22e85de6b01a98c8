"""Momentum towers and queues (MoCo v2 / ALBEF, align/model/momentum.py): the loss equals ALBEF's formula
written out here, the EMA and the queue move as specified, checkpoints carry both and a resumed run
continues exactly; trained on scikit-learn's real digits."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.support.tiny import TINY_MODALITIES

MOMENTUM = {"queue_size": 40, "momentum": 0.9, "distill": 0.4}


def tiny(tmp_path, **train):
    from align.config.schema import config_from_dict

    return config_from_dict({
        "output_dir": str(tmp_path), "seed": 3,
        "model": {"embed_dim": 16, "modalities": copy.deepcopy(TINY_MODALITIES), "momentum": MOMENTUM},
        "data": {"train": {"source": "sklearn-digits", "max_samples": 64, "label_column": "label",
                           "columns": {"image": "image", "text": "caption"}}},
        "train": {"batch_size": 16, "steps": 12, "lr": 1e-3, "warmup_steps": 2, "progress": False,
                  "log_every": 1, "checkpoint_every": 6, **train}})


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
    from align.model.momentum import queue_loss

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


def test_momentum_run_moves_ema_and_queue_and_resumes_exactly(tmp_path):
    from align.model.checkpoint import load_model
    from align.app.trainer import train

    full = train(tiny(tmp_path / "full"))
    mom = full.model.momentum
    assert mom.queue_ptr("text") == mom.queue_ptr("image") == (12 * 16) % 40  # 12 steps of 16 keys, queue of 40
    main, ema = dict(full.model.adapters.named_parameters()), dict(mom.adapters.named_parameters())
    moved = [n for n in main if not torch.equal(main[n], ema[n])]
    assert moved and all(not p.requires_grad for p in ema.values())
    # the newest queue entries are momentum embeddings: unit vectors, not the random initial ones
    newest = mom.queue("text")[(mom.queue_ptr("text") - 16) % 40: mom.queue_ptr("text") or 40]
    torch.testing.assert_close(newest.norm(dim=-1), torch.ones(len(newest)))

    first = train(tiny(tmp_path / "split"), stop_at=6)
    second = train(tiny(tmp_path / "split"), resume=True)
    for (s1, x), (s2, y) in zip(full.losses, first.losses + second.losses):
        assert s1 == s2 and x == pytest.approx(y, rel=1e-5, abs=1e-6), (s1, x, y)
    for (name, p), q in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)  # towers, EMA towers, queues
    model, _ = load_model(tmp_path / "full")
    torch.testing.assert_close(model.momentum.queue("image"), mom.queue("image"))


def test_a_checkpoint_with_one_queue_pointer_still_loads():
    """Checkpoints written before each queue had its own write position (one ``queue_ptr``)."""
    import torch.nn as nn

    from align.model.momentum import MomentumTowers

    towers = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    mom = MomentumTowers(towers, nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity()}), 2, 8, 0.9, 0.0)
    state = {k: v for k, v in mom.state_dict().items() if not k.startswith("queue_ptr_")}
    state["queue_ptr"] = torch.tensor([5])
    mom.load_state_dict(state)
    assert mom.queue_ptr("a") == mom.queue_ptr("b") == 5


def test_momentum_refuses_other_objectives():
    from align.errors import ConfigError
    from align.config.schema import config_from_dict

    with pytest.raises(ConfigError, match=r"model\.momentum"):
        config_from_dict({"model": {"modalities": {"image": {}, "text": {}}, "loss": "dcl", "momentum": MOMENTUM},
                          "data": {"train": {"source": "csv", "columns": {"image": "a", "text": "b"}}}},
                         validate_adapters=False)
