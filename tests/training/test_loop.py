"""End-to-end training on real data (scikit-learn digits): learning, resume, NaN handling, checkpoints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from align.app.demo import demo_config_path
from align.app.trainer import train
from align.config.schema import config_from_dict, load_config
from align.model.checkpoint import load_model, load_training_state, resolve_checkpoint
from align.training.loop import TrainingError
from tests.support.tiny import DIGITS_MODEL


def tiny_config(out: Path, **train) -> dict:
    return {
        "output_dir": str(out),
        "seed": 3,
        "model": copy.deepcopy(DIGITS_MODEL),
        "data": {
            "train": {
                "source": "sklearn-digits",
                "split": "train",
                "max_samples": 64,
                "columns": {"image": "image", "text": "caption"},
                "label_column": "label",
            }
        },
        "train": {
            "batch_size": 16,
            "steps": 12,
            "lr": 1e-3,
            "warmup_steps": 2,
            "progress": False,
            "log_every": 1,
            **train,
        },
    }


def test_resume_continues_the_same_loss_curve(tmp_path):
    # 64 rows / batch 16 = 4 steps per epoch: the break at step 6 is mid-epoch.
    full = train(config_from_dict(tiny_config(tmp_path / "full", checkpoint_every=6)))
    cfg = config_from_dict(tiny_config(tmp_path / "split", checkpoint_every=6))
    first = train(cfg, stop_at=6)
    assert [s for s, _ in first.losses] == list(range(1, 7))
    assert resolve_checkpoint(tmp_path / "split").name == "step-000006"
    second = train(cfg, resume=True)
    assert [s for s, _ in second.losses] == list(range(7, 13))
    resumed = first.losses + second.losses
    for (s1, a), (s2, b) in zip(full.losses, resumed):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-5, abs=1e-6), f"step {s1}: {a} vs {b}"
    for (name, p), q in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"parameter {name} differs")
    # the loss actually moved, so agreement is not trivial
    assert abs(full.losses[0][1] - full.losses[-1][1]) > 1e-3


def test_checkpoint_is_safetensors_and_reloads_without_code(tmp_path):
    res = train(config_from_dict(tiny_config(tmp_path, steps=4, checkpoint_every=2, keep_checkpoints=1)))
    root = tmp_path / "checkpoints"
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dirs == ["step-000004"], dirs  # keep_checkpoints=1 pruned step 2; no temp folders left
    ckpt = resolve_checkpoint(tmp_path)
    assert (ckpt / "model.safetensors").is_file()
    state = load_training_state(ckpt)  # torch.load(weights_only=True) inside
    assert state["step"] == 4 and "optimizer" in state and "rng" in state
    model, cfg = load_model(tmp_path)
    for (name, p), q in zip(res.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    assert cfg.model.embed_dim == 32
    assert list(tmp_path.rglob("events.out.tfevents*")), "no TensorBoard scalars written"
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]


def test_a_fresh_run_sets_an_earlier_runs_checkpoints_aside(tmp_path, capsys):
    """A fresh run into a folder that holds another run's checkpoints: they are moved, not mixed
    with the new ones (a later --resume falling back to 'the newest good checkpoint' would otherwise
    pick the earlier run's step-12) and not deleted."""
    train(config_from_dict(tiny_config(tmp_path, steps=12, checkpoint_every=6)))
    train(config_from_dict(tiny_config(tmp_path, steps=4, checkpoint_every=2)))
    assert "moved the checkpoints of an earlier run" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-")) == [
        "step-000002",
        "step-000004",
    ]
    (previous,) = tmp_path.glob("checkpoints-previous-*")
    assert sorted(p.name for p in previous.iterdir() if p.name.startswith("step-")) == ["step-000006", "step-000012"]
    train(config_from_dict(tiny_config(tmp_path, steps=6, checkpoint_every=2)), resume=True)  # resume: nothing moves
    assert len(list(tmp_path.glob("checkpoints-previous-*"))) == 1
    assert resolve_checkpoint(tmp_path).name == "step-000006"


def _linear_output_dtypes(cfg) -> tuple[object, set[tuple[bool, torch.dtype]]]:
    """Train ``cfg``, recording for every ``nn.Linear`` forward (inside the towers) whether CPU
    autocast was on and the output's dtype."""
    seen: set[tuple[bool, torch.dtype]] = set()

    def record(module, _inputs, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            seen.add((torch.is_autocast_enabled("cpu"), output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        res = train(cfg)
    finally:
        handle.remove()
    return res, seen


def test_bf16_autocast_flag_runs(tmp_path):
    res, seen = _linear_output_dtypes(config_from_dict(tiny_config(tmp_path, steps=2, mixed_precision="bf16")))
    assert seen == {(True, torch.bfloat16)}, seen  # every training forward ran under bf16 autocast
    assert all(torch.isfinite(torch.tensor(v)) for _, v in res.losses)
    assert res.model.logit_scale.dtype == torch.float32  # master weights stay fp32
    _, plain = _linear_output_dtypes(config_from_dict(tiny_config(tmp_path / "fp32", steps=2)))
    assert plain == {(False, torch.float32)}, plain  # and without the flag, none did


def test_nan_loss_stops_with_step_and_saves_state(tmp_path):
    data = tiny_config(tmp_path, steps=3)
    data["model"]["init_logit_scale"] = float("nan")
    with pytest.raises(TrainingError, match=r"step 1\b") as info:
        train(config_from_dict(data))
    assert "nan-step-000001" in str(info.value)
    assert (tmp_path / "checkpoints" / "nan-step-000001" / "model.safetensors").is_file()


def test_short_run_learns_on_real_digits(tmp_path):
    """The demo config, cut to 150 steps: the loss falls and zero-shot beats chance (0.10) widely."""

    val = "{source: sklearn-digits, split: test, columns: {image: image, text: caption}, max_samples: 128}"
    cfg = load_config(
        demo_config_path(),
        [
            f"output_dir={tmp_path}",
            "train.steps=150",
            "train.warmup_steps=10",
            "train.progress=false",
            f"data.val={val}",
            "train.val_every=50",
        ],
    )
    res = train(cfg)
    first = sum(v for _, v in res.losses[:10]) / 10
    last = sum(v for _, v in res.losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert [s for s, _ in res.val_losses] == [50, 100, 150]
    assert res.val_losses[-1][1] < res.val_losses[0][1], res.val_losses  # held-out loss falls too
    metrics = res.eval_metrics  # the eval section ran at the end of training
    assert metrics["zeroshot"]["top1"] >= 0.5, metrics["zeroshot"]["top1"]
    assert metrics["retrieval"]["image_to_text/R@1"] >= 0.5
    assert metrics["retrieval"]["n_b_items"] == 360 * 8  # every templated caption ...
    assert metrics["retrieval"]["n_b"] == 80  # ... of which 80 are distinct: one gallery item each


def test_demo_command_writes_report(tmp_path, capsys):
    from align.app.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "8", "train.progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot top-1" in printed and "image->text/R@5" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    zs = metrics["zeroshot"]
    assert zs["n"] == 360 and 0.0 <= zs["top1"] <= 1.0
    assert sum(map(sum, zs["confusion_matrix"])) == 360
    for name in ("loss.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_config_errors_by_key(tmp_path, capsys):
    from align.app.cli import main

    code = main(["train", str(demo_config_path()), f"output_dir={tmp_path}", "train.batch_szie=4"])
    assert code == 2
    assert "train.batch_szie" in capsys.readouterr().err


def test_eval_during_training_keeps_the_best_checkpoint(tmp_path):
    cfg = load_config(
        demo_config_path(),
        [
            f"output_dir={tmp_path}",
            "train.steps=30",
            "train.warmup_steps=5",
            "train.progress=false",
            "train.eval_every=10",
            "train.best_metric=zeroshot/top1",
            "train.batch_size=32",
            "eval.data.max_samples=100",
        ],
    )
    res = train(cfg)
    assert [s for s, _ in res.eval_history] == [10, 20, 30]
    tops = [m["zeroshot/top1"] for _, m in res.eval_history]
    assert res.best == (res.eval_history[tops.index(max(tops))][0], max(tops))
    best = tmp_path / "checkpoints" / "best"
    assert load_training_state(best)["step"] == res.best[0]
    assert resolve_checkpoint(tmp_path).name == "step-000030"  # 'latest' is not moved by 'best'
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert sum("eval/zeroshot/top1" in r for r in logged) == 3
