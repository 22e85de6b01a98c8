"""Safety of runs and files: one writer per run folder, damaged checkpoints refused (and skipped on
resume), and a resumed run's records (log, skipped count, best checkpoint) equal to an
uninterrupted run's. Tiny open_clip towers on scikit-learn's digits; a few steps each."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from align.app.trainer import train
from align.config.schema import config_from_dict
from align.model.checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    load_weights,
    save_checkpoint,
    step_folders,
)
from align.training.runlock import RunLock
from tests.support.run_processes import (
    FORK,
    REPO,
    align_train,
    children,
    holder_pid,
    kill_if_still,
    output,
    proc_stat,
    wait_for,
)
from tests.support.tiny import TINY_MODALITIES  # tests/ is on sys.path (no __init__.py)

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_TRAIN = {
    "source": "sklearn-digits",
    "split": "train",
    "max_samples": 64,
    "columns": {"image": "image", "text": "caption"},
    "label_column": "label",
}
EVAL = {
    "data": {
        "source": "sklearn-digits",
        "split": "test",
        "max_samples": 60,
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    },
    "zeroshot": {"query": "image", "classnames": DIGITS, "templates": ["the digit {}"]},
}
TIMING = ("wall_s", "samples_per_s")  # the only log fields allowed to differ between runs


def tiny(out: Path, train_data: dict | None = None, eval_section: dict | None = None, **train_kw) -> dict:
    cfg = {
        "output_dir": str(out),
        "seed": 3,
        "model": {"embed_dim": 16, "modalities": copy.deepcopy(TINY_MODALITIES)},
        "data": {"train": copy.deepcopy(train_data or DIGITS_TRAIN)},
        "train": {
            "batch_size": 16,
            "steps": 8,
            "lr": 1e-3,
            "warmup_steps": 2,
            "progress": False,
            "log_every": 1,
            "eval_at_end": False,
            **train_kw,
        },
    }
    return {**cfg, "eval": copy.deepcopy(eval_section)} if eval_section else cfg


def write_yaml(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def flip(path: Path, offset: int, n: int) -> None:
    """Invert ``n`` bytes of ``path`` from ``offset`` (every byte really changes)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0xFF for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- one writer per run folder


def test_second_run_in_the_same_output_dir_fails_at_once_naming_the_holder(tmp_path, capsys):
    from align.app.cli import main

    out = tmp_path / "run"
    # The second run's data is unreadable: had it got as far as loading data it would fail on that.
    (tmp_path / "garbage.jsonl").write_text("not json at all\n")
    garbage = {
        "source": "json",
        "data_files": str(tmp_path / "garbage.jsonl"),
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    }
    second = write_yaml(tiny(out, train_data=garbage), tmp_path / "second.yaml")
    warm = tmp_path / "warm"
    with RunLock(warm):  # the same refusal in-process; it also does the imports, so the attempt below is quick
        assert main(["train", str(write_yaml(tiny(warm, train_data=garbage), tmp_path / "warm.yaml"))]) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    first = align_train(write_yaml(tiny(out, steps=200, checkpoint_every=100), tmp_path / "first.yaml"))
    wait_for(lambda: holder_pid(out) == first.pid, first, "the first run took the lock")
    t0 = time.perf_counter()
    code = main(["train", str(second)])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert holder_pid(out) == first.pid, "precondition: the first run must still hold the folder"
    assert code == 2, err
    assert err.count("\n") == 1 and "in use by another run" in err, err
    assert f"pid {first.pid} on host {socket.gethostname()}" in err and "first.yaml" in err, err
    assert elapsed < 10, f"the second run took {elapsed:.1f}s to fail"
    assert first.wait(timeout=180) == 0, output(first)
    assert [r["step"] for r in log_records(out)] == list(range(1, 201))  # nothing interleaved or deleted
    assert [s for s, _ in step_folders(out / "checkpoints")] == [200, 100]
    load_model(out)  # verifies against its manifest
    assert not (out / ".lock.json").exists(), "the holder record outlived its run"


def test_a_killed_run_does_not_block_its_resume(tmp_path):
    out = tmp_path / "run"
    data = tiny(out, steps=1000, checkpoint_every=4)
    data["data"]["num_workers"] = 1  # forked workers share the lock's file description
    proc = align_train(write_yaml(data, tmp_path / "run.yaml"))
    wait_for(lambda: (out / "checkpoints" / "latest").is_file(), proc, "the first checkpoint")
    assert holder_pid(out) == proc.pid
    workers = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert holder_pid(out) == proc.pid  # its holder record is left behind; the OS lock is not
        newest = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
        t0 = time.perf_counter()
        res = train(config_from_dict(data), resume=True, stop_at=newest + 2)
        assert time.perf_counter() - t0 < 30
        assert [s for s, _ in res.losses] == [newest + 1, newest + 2]
        steps = [r["step"] for r in log_records(out)]
        assert steps == list(range(1, newest + 3)), "steps logged by the killed run past its checkpoint came back"
        assert not (out / ".lock.json").exists()
    finally:
        kill_if_still(workers)  # orphaned workers exit on their own within seconds; don't leave any behind


def test_a_forked_child_neither_releases_nor_keeps_the_lock(tmp_path):
    """Whatever the filelock version does with descriptors in forked children."""
    proc = subprocess.run([sys.executable, "-c", FORK, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    refused, orphan = (proc.stdout.split() + ["", ""])[:2]
    orphan = [(int(orphan), proc_stat(int(orphan))[19])] if orphan.isdigit() and proc_stat(int(orphan)) else []
    try:
        assert refused == "1", f"a child's exit released the parent's lock: {proc.stdout} {proc.stderr}"
        t0 = time.perf_counter()
        with RunLock(tmp_path):  # the parent was killed; its sleeping child must not hold the lock
            assert time.perf_counter() - t0 < 2
    finally:
        kill_if_still(orphan)


# ---------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step run with an eval section: checkpoints/step-000002 and step-000004."""
    out = tmp_path_factory.mktemp("finished")
    train(config_from_dict(tiny(out, steps=4, checkpoint_every=2, eval_section=EVAL)))
    return out


@pytest.fixture
def ckpt(finished_run, tmp_path) -> Path:
    """A private copy of the last checkpoint, to damage."""
    return Path(shutil.copytree(finished_run / "checkpoints" / "step-000004", tmp_path / "step-000004"))


def fresh_model(ckpt: Path):
    from align.config.schema import load_config
    from align.model.align_model import AlignModel

    return AlignModel(load_config(ckpt / "config.yaml").model)


def test_overwritten_weights_are_detected_naming_the_file(ckpt):
    from safetensors.torch import load_file

    path = ckpt / "model.safetensors"
    flip(path, path.stat().st_size // 2, 4096)
    load_file(str(path))  # the format itself cannot tell: this loads without complaint
    model = fresh_model(ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.safetensors: content is damaged \(sha256"):
        load_weights(model, ckpt)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed although the checkpoint was refused"
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(ckpt)


def test_flipped_training_state_is_detected_naming_the_file(ckpt):
    path = ckpt / "training_state.pt"
    flip(path, path.stat().st_size // 2, 64)
    torch.load(path, map_location="cpu", weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"training_state\.pt: content is damaged"):
        load_training_state(ckpt)


def test_truncated_empty_and_missing_files_are_named(ckpt):
    weights, state = ckpt / "model.safetensors", ckpt / "training_state.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    state.write_bytes(b"")
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: \d+ bytes where manifest\.json says \d+ "
        r"\(truncated\)",
    ):
        load_weights(fresh_model(ckpt), ckpt)
    with pytest.raises(CheckpointError, match=r"training_state\.pt: 0 bytes .*\(empty\)"):
        load_training_state(ckpt)
    (ckpt / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"config\.yaml: missing"):
        load_model(ckpt)


def test_checkpoint_without_manifest_is_refused_unless_trusted(ckpt, tmp_path, monkeypatch, capsys):
    """Deleting manifest.json must not turn verification off: loading is refused, naming the file and
    the flag; `align --trust-unverified` loads it with a warning, and damage is still named then."""
    from align.app.cli import main

    (ckpt / "manifest.json").unlink()
    monkeypatch.delenv("ALIGN_TRUST_UNVERIFIED", raising=False)
    for load in (load_training_state, load_model):
        with pytest.raises(CheckpointError, match=r"has no manifest\.json.*--trust-unverified"):
            load(ckpt)
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ev")]
    assert main(args) == 2 and "has no manifest.json" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="loaded unverified"):
        assert main(["--trust-unverified", *args]) == 0
    assert "ALIGN_TRUST_UNVERIFIED" not in os.environ  # for that command only
    monkeypatch.setenv("ALIGN_TRUST_UNVERIFIED", "1")
    with pytest.warns(UserWarning, match="no manifest.json"):
        assert load_training_state(ckpt)["step"] == 4
    with pytest.warns(UserWarning, match="no manifest.json"):
        load_model(ckpt)
    weights, state = ckpt / "model.safetensors", ckpt / "training_state.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    state.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read"):
        load_weights(fresh_model(ckpt), ckpt)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"training_state\.pt: cannot be read"):
        load_training_state(ckpt)


def test_non_finite_weights_and_optimizer_state_are_refused_naming_the_tensor(ckpt, tmp_path):
    model, cfg = load_model(ckpt)
    state = load_training_state(ckpt)
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    nan_weights = save_checkpoint(tmp_path / "a", 4, model, cfg, state)  # a valid manifest: saved like that
    with pytest.raises(CheckpointError, match=r"tensor 'logit_scale' holds 1 non-finite value"):
        load_weights(fresh_model(ckpt), nan_weights)

    model, cfg = load_model(ckpt)
    param_id = next(iter(state["optimizer"]["state"]))
    state["optimizer"]["state"][param_id]["exp_avg"].view(-1)[0] = float("inf")
    bad_state = save_checkpoint(tmp_path / "b", 4, model, cfg, state)
    with pytest.raises(CheckpointError, match=rf"tensor 'optimizer\.state\.{param_id}\.exp_avg' holds 1 non-finite"):
        load_training_state(bad_state)


def test_resume_falls_back_to_the_newest_good_checkpoint(tmp_path, capsys):
    cfg = config_from_dict(tiny(tmp_path, steps=8, checkpoint_every=2))
    train(cfg, stop_at=6)
    root = tmp_path / "checkpoints"
    flip(root / "step-000006" / "model.safetensors", 10_000, 4096)
    model, saved_cfg = load_model(root / "step-000004")  # step 4 saved with a NaN, manifest and all
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    save_checkpoint(root, 4, model, saved_cfg, load_training_state(root / "step-000004"), update_latest=False)
    capsys.readouterr()
    res = train(cfg, resume=True)
    printed = capsys.readouterr().out
    assert (
        f"skipping checkpoint {root / 'step-000006'}: " in printed
        and "model.safetensors: content is damaged" in printed
    ), printed
    assert f"skipping checkpoint {root / 'step-000004'}: " in printed and "'logit_scale'" in printed, printed
    assert f"resumed from {root / 'step-000002'} at step 2" in printed
    assert [s for s, _ in res.losses] == list(range(3, 9))
    assert [r["step"] for r in log_records(tmp_path)] == list(range(1, 9))

    for _, folder in step_folders(root):  # now none is good
        (folder / "training_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no good checkpoint to resume from") as info:
        train(cfg, resume=True)
    for name in ("step-000002", "step-000004", "step-000006", "step-000008"):
        assert f"{name}: {root / name / 'training_state.pt'}: 0 bytes" in str(info.value)


def test_resume_starts_at_latest_not_at_an_earlier_runs_higher_steps(tmp_path):
    from align.training.resume import resume_candidates

    for step in (2, 4, 6, 8):  # 6 and 8 are left from an earlier, longer run in the same folder
        (tmp_path / f"step-{step:06d}").mkdir()
    (tmp_path / "latest").write_text("step-000004\n")
    assert [p.name for p in resume_candidates(tmp_path)] == ["step-000004", "step-000002"]
    (tmp_path / "latest").write_text("step-000099\n")  # names nothing: every step folder, newest first
    assert [p.name for p in resume_candidates(tmp_path, say=lambda _: None)] == [
        "step-000008",
        "step-000006",
        "step-000004",
        "step-000002",
    ]


# ---------------------------------------------------------------- a resumed run's records


def test_best_for_a_checkpoint_from_before_it_was_stored_comes_from_checkpoints_best(ckpt, tmp_path):
    from align.training.resume import restored_best

    model, cfg = load_model(ckpt)
    state = load_training_state(ckpt)
    del state["best"]  # as older code wrote it
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 2, model, cfg, {**state, "step": 2}, name="best", update_latest=False)
    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"step": 2, "eval/zeroshot/top1": 0.25}) + "\n")
    assert restored_best(state, root, log, "zeroshot/top1", step=4) == (2, 0.25)  # value from the log
    assert restored_best(state, root, log, "zeroshot/top1", step=1) is None  # best/ is past the resume point


@pytest.fixture(scope="module")
def digits_with_a_corrupt_one(tmp_path_factory) -> Path:
    """40 scikit-learn digits as PNG files; row 5 is a corrupt file (skipped with on_error: skip)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("table")
    digits = load_digits()
    rows = []
    for i in range(40):
        path = root / f"{i}.png"
        if i == 5:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
        else:
            Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8)).save(path)
        rows.append(
            {"file": str(path), "caption": f"the digit {DIGITS[digits.target[i]]}", "label": int(digits.target[i])}
        )
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_resumed_run_keeps_the_log_skipped_count_and_best_checkpoint(digits_with_a_corrupt_one, tmp_path, capsys):
    spec = {
        "source": "json",
        "data_files": str(digits_with_a_corrupt_one / "rows.jsonl"),
        "columns": {"image": "file", "text": "caption"},
        "label_column": "label",
        "on_error": "skip",
        "load_kwargs": {"cache_dir": str(tmp_path / "hf")},
    }

    def config(out: Path):
        return config_from_dict(
            tiny(
                out,
                train_data=spec,
                eval_section=EVAL,
                batch_size=8,
                steps=12,
                checkpoint_every=4,
                eval_every=2,
                best_metric="zeroshot/top1",
            )
        )

    full = train(config(tmp_path / "full"))
    cfg = config(tmp_path / "split")
    first = train(cfg, stop_at=10)  # "killed" at step 10: steps 9-10 are logged past the checkpoint at 8
    assert first.skipped >= 1, "precondition: a sample was skipped before the checkpoint"
    assert full.best[0] <= 8, "precondition: the best step is before the resume point, else nothing to restore"
    ckpts = tmp_path / "split" / "checkpoints"
    leftovers = [
        ckpts / ".step-000012.tmp-k1ll3d",
        ckpts / ".best.tmp-x7",
        ckpts / ".latest.a8b2",
        tmp_path / "split" / ".train_log.jsonl.q9",
    ]
    keep = [ckpts / "notes.txt", tmp_path / "split" / ".my-own-file"]
    for path in leftovers[:2]:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    for path in leftovers[2:] + keep:
        path.write_text("x")
    capsys.readouterr()
    second = train(cfg, resume=True)
    printed = capsys.readouterr().out
    assert [s for s, _ in second.losses] == list(range(9, 13))

    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in log_records(tmp_path / "split")]
    expected = [{k: v for k, v in r.items() if k not in TIMING} for r in log_records(tmp_path / "full")]
    assert [r["step"] for r in strip] == [r["step"] for r in expected]  # no step twice
    for got, want in zip(strip, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (got, want)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "split" / "tensorboard"))
    events.Reload()  # TensorBoard drops the killed run's steps 9-10 (the resumed run wrote a purge)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    assert second.skipped == full.skipped, "the skipped-sample count restarted at the resume"
    assert second.best == full.best
    assert (
        load_training_state(ckpts / "best")["step"]
        == load_training_state(tmp_path / "full" / "checkpoints" / "best")["step"]
        == full.best[0]
    )

    for path in leftovers:
        assert not path.exists(), f"{path} was not cleaned up"
        assert f"removed {path}" in printed
    for path in keep:
        assert path.exists(), f"{path} is not ours and must stay"


def test_align_eval_needs_no_training_state(finished_run, ckpt, tmp_path, capsys):
    from align.app.cli import main

    (ckpt / "training_state.pt").unlink()  # an exported checkpoint: weights + config only
    assert main(["eval", "zeroshot", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval")]) == 0, (
        capsys.readouterr().err
    )
    report = json.loads((tmp_path / "eval" / "zeroshot.json").read_text())
    assert report["model"]["step"] == 4  # from the weights' metadata
