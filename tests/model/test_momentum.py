"""Momentum towers and queues (MoCo v2 / ALBEF, align/model/momentum.py): the EMA and the queue move as
specified (the loss is tested in tests/objectives/test_queue.py), checkpoints carry both and a resumed run
continues exactly; trained on scikit-learn's real digits."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.support.tiny import TINY_MODALITIES

MOMENTUM = {"queue_size": 40, "momentum": 0.9, "distill": 0.4}


def tiny(tmp_path, **train):
    from align.config.schema import config_from_dict

    return config_from_dict(
        {
            "output_dir": str(tmp_path),
            "seed": 3,
            "model": {"embed_dim": 16, "modalities": copy.deepcopy(TINY_MODALITIES), "momentum": MOMENTUM},
            "data": {
                "train": {
                    "source": "sklearn-digits",
                    "max_samples": 64,
                    "label_column": "label",
                    "columns": {"image": "image", "text": "caption"},
                }
            },
            "train": {
                "batch_size": 16,
                "steps": 12,
                "lr": 1e-3,
                "warmup_steps": 2,
                "progress": False,
                "log_every": 1,
                "checkpoint_every": 6,
                **train,
            },
        }
    )


def test_momentum_run_moves_ema_and_queue_and_resumes_exactly(tmp_path):
    from align.app.trainer import train
    from align.model.checkpoint import load_model

    full = train(tiny(tmp_path / "full"))
    mom = full.model.momentum
    assert mom.queue_ptr("text") == mom.queue_ptr("image") == (12 * 16) % 40  # 12 steps of 16 keys, queue of 40
    main, ema = dict(full.model.adapters.named_parameters()), dict(mom.adapters.named_parameters())
    moved = [n for n in main if not torch.equal(main[n], ema[n])]
    assert moved and all(not p.requires_grad for p in ema.values())
    # the newest queue entries are momentum embeddings: unit vectors, not the random initial ones
    newest = mom.queue("text")[(mom.queue_ptr("text") - 16) % 40 : mom.queue_ptr("text") or 40]
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
    from align.config.schema import config_from_dict
    from align.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.momentum"):
        config_from_dict(
            {
                "model": {"modalities": {"image": {}, "text": {}}, "loss": "dcl", "momentum": MOMENTUM},
                "data": {"train": {"source": "csv", "columns": {"image": "a", "text": "b"}}},
            },
            validate_adapters=False,
        )
