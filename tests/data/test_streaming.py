"""Streaming from webdataset tar shards (``data.train.streaming``, align/data/streaming.py) written from
real data: scikit-learn's digits (.png + .txt + .json with the label) and FSDD recordings (.wav +
.txt + .json). Sharding over processes and DataLoader workers, per-sample augmentation seeds,
exact resume, corrupt members, what is refused, a real 2-process run and configs/fsdd_shards.yaml."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from align.app.cli import main as align_main
from align.app.trainer import train
from align.config.dataset import DatasetSpec
from align.config.schema import ModelConfig, config_from_dict, load_config
from align.data.shards import write_shards
from align.data.streaming import StreamingLoader
from align.errors import ConfigError, DataError, SampleError
from align.model.align_model import AlignModel
from align.model.checkpoint import load_training_state, resolve_checkpoint
from tests.support.gloo_world import free_port, launch_env
from tests.support.tiny import TINY_MODALITIES

REPO = Path(__file__).resolve().parents[2]
FSDD = REPO.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TINY_AST = {
    "sample_rate": 8000,
    "clip_seconds": 0.25,
    "n_mels": 32,
    "patch_size": 8,
    "patch_stride": 8,
    "width": 32,
    "layers": 1,
    "heads": 2,
}  # 0.25 s: shorter than every clip, so crops are random

pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason="shared data missing")


def digit_rows(start: int = 0, stop: int = 120, bad: str | None = None):
    """sklearn's real 8x8 digits as shard samples; ``bad`` gets garbage instead of a PNG."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(start, stop):
        buf = io.BytesIO()
        Image.fromarray((digits.images[i] * (255 / 16)).round().astype(np.uint8)).save(buf, format="PNG")
        label, key = int(digits.target[i]), f"digit{i:04d}"
        yield {
            "__key__": key,
            "png": b"not a png at all" if key == bad else buf.getvalue(),
            "txt": f"a handwritten {NAMES[label]}.",
            "json": {"label": label},
        }


def fsdd_rows(files: list[Path], bad: str | None = None):
    """FSDD recordings as shard samples; ``bad`` is cut inside its data chunk (a truncated WAV)."""
    for f in files:
        label, speaker, take = f.stem.split("_")
        data = f.read_bytes()
        yield {
            "__key__": f.stem,
            "wav": data[:60] if f.stem == bad else data,
            "txt": f"a person saying {NAMES[int(label)]}.",
            "json": {"label": int(label), "speaker": speaker, "take": int(take)},
        }


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(digit_rows(), root, 30, prefix="digits")  # 4 shards of 30
    write_shards(fsdd_rows(sorted(FSDD.glob("*_5.wav"))), root, 15, prefix="fsdd")  # 60 takes, 4 of 15
    return root


@pytest.fixture(scope="module")
def pre() -> dict:
    """Preprocessors of a tiny image + audio + text model."""
    mods = {**copy.deepcopy(TINY_MODALITIES), "audio": {"options": dict(TINY_AST)}}
    return AlignModel(ModelConfig(embed_dim=16, modalities=mods)).preprocessors()


def digit_spec(files, **kw) -> dict:
    return {
        "source": "webdataset",
        "data_files": files,
        "streaming": True,
        "shuffle_buffer": 16,
        "columns": {"image": "png", "text": "txt"},
        "label_column": "json.label",
        **kw,
    }


def stream(spec: dict, pre: dict, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1):
    spec = DatasetSpec(**spec)
    return StreamingLoader(
        spec,
        "data.train",
        {m: pre[m] for m in spec.columns},
        batch_size,
        seed=3,
        num_workers=workers,
        rank=rank,
        world_size=world,
    )


def take(loader: StreamingLoader, n: int) -> list[dict]:
    """``n`` batches, epoch after epoch (stopping mid-epoch leaves the loader's position there)."""
    out: list[dict] = []
    while len(out) < n:
        for batch in loader.epoch_batches():
            out.append(batch)
            if len(out) == n:
                break
    return out


def keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


@pytest.mark.parametrize("n_shards", [4, 3], ids=["shards-per-process", "every-other-sample"])
@pytest.mark.parametrize("workers", [0, 2])
def test_processes_and_workers_split_each_epoch(shards, pre, n_shards, workers):
    # 4 shards: each process streams 2 of them; 3 shards (not a multiple of 2 processes): each keeps
    # every other sample. Batch 1 drops nothing, so each epoch must be exactly the 30 * n_shards samples.
    files = sorted(str(p) for p in shards.glob("digits-*.tar"))[:n_shards]
    everything = sorted(f"digit{i:04d}" for i in range(30 * n_shards))
    loaders = [stream(digit_spec(files), pre, 1, workers, rank, 2) for rank in range(2)]
    orders = []
    for epoch in range(2):
        seen = [keys(list(loader.epoch_batches())) for loader in loaders]
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: a sample went to both processes"
        assert sorted(seen[0] + seen[1]) == everything, f"epoch {epoch}: a sample was read twice or never"
        orders.append(seen[0])
    assert orders[0] != orders[1]  # set_epoch reshuffles
    assert all(loader.epoch == 2 for loader in loaders)


def test_batches_are_full_and_the_tails_dropped(shards, pre):
    # 2 processes x 2 workers: each worker streams one shard of 30 = 3 batches of 8, dropping 6
    files = str(shards / "digits-*.tar")
    for rank in range(2):
        batches = list(stream(digit_spec(files), pre, 8, workers=2, rank=rank, world=2).epoch_batches())
        assert [len(b["keys"]) for b in batches] == [8] * 6
        assert batches[0]["image"].shape == (8, 3, 16, 16) and batches[0]["label"].shape == (8,)
        assert int(sum(b["skipped"] for b in batches)) == 0


def test_augmentation_seeds_do_not_depend_on_workers(shards, pre):
    spec = {
        "source": "webdataset",
        "data_files": str(shards / "fsdd-*.tar"),
        "streaming": True,
        "columns": {"audio": "wav", "text": "txt"},
    }
    by_workers = {}
    for workers in (0, 2):
        loader = stream(spec, pre, 1, workers)
        by_workers[workers] = [
            {k: b["audio"][0] for b in loader.epoch_batches() for k in b["keys"]} for _epoch in range(2)
        ]
    for epoch in range(2):
        zero, two = by_workers[0][epoch], by_workers[2][epoch]
        assert sorted(zero) == sorted(two) and len(zero) == 60
        for key in zero:
            torch.testing.assert_close(zero[key], two[key], rtol=0, atol=0, msg=key)
    # ... and they do depend on the epoch: random crops differ between visits
    assert sum(not torch.equal(by_workers[0][0][k], by_workers[0][1][k]) for k in by_workers[0][0]) > 30


@pytest.mark.parametrize("stop", [9, 14], ids=["mid-epoch", "epoch-end"])
def test_loader_resumes_exactly(shards, pre, stop):
    # 2 workers x 60 samples = 7 batches each, 14 per epoch; 30 batches cross two epoch ends
    spec = digit_spec(str(shards / "digits-*.tar"))
    straight = take(stream(spec, pre, 8, workers=2), 30)
    first = stream(spec, pre, 8, workers=2)
    head = take(first, stop)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # as the checkpoint stores it, loaded without code
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert state["processes"][0]["epoch"] == 0 and state["processes"][0]["batches"] == stop
    second = stream(spec, pre, 8, workers=2)
    second.load_state_dict(state)
    resumed = head + take(second, 30 - stop)
    assert keys(resumed) == keys(straight)
    for i, (a, b) in enumerate(zip(straight, resumed)):
        for name in ("image", "label", "index"):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"batch {i} {name}")
        torch.testing.assert_close(a["text"], b["text"], rtol=0, atol=0)


def run_config(out: Path, files, **train_opts) -> dict:
    return {
        "output_dir": str(out),
        "seed": 3,
        "model": {"embed_dim": 16, "modalities": copy.deepcopy(TINY_MODALITIES)},
        "data": {"train": digit_spec(files), "num_workers": 2},
        "train": {
            "batch_size": 16,
            "steps": 10,
            "lr": 1e-3,
            "warmup_steps": 2,
            "progress": False,
            "log_every": 1,
            **train_opts,
        },
    }


@pytest.fixture(scope="module")
def resumed_runs(shards, tmp_path_factory):
    # 2 workers x 60 samples = 3 batches of 16 each, 6 steps per epoch: the stop at step 5 is
    # mid-epoch with worker 1's turn next, and the resumed run crosses the epoch end at step 6.
    tmp = tmp_path_factory.mktemp("runs")
    files = str(shards / "digits-*.tar")
    full = train(config_from_dict(run_config(tmp / "full", files, checkpoint_every=5)))
    cfg = config_from_dict(run_config(tmp / "split", files, checkpoint_every=5))
    first = train(cfg, stop_at=5)
    state = load_training_state(resolve_checkpoint(tmp / "split"))
    second = train(cfg, resume=True)
    return full, first, second, state, tmp / "split"


def test_training_resumed_mid_stream_equals_uninterrupted(resumed_runs):
    full, first, second, state, _ = resumed_runs
    assert state["stream"]["processes"][0] == {"epoch": 0, "batches": 5, "positions": [48, 32], "next_worker": 1}
    assert [s for s, _ in first.losses + second.losses] == list(range(1, 11))
    for (s, a), (_, b) in zip(full.losses, first.losses + second.losses):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"step {s}: {a} vs {b}"
    for (name, p), q in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"parameter {name} differs")
    assert abs(full.losses[0][1] - full.losses[-1][1]) > 1e-3  # it trained: agreement is not trivial


@pytest.mark.parametrize(
    "override, key",
    [
        ({"data_files": "three"}, "data.train.data_files"),
        ({"num_workers": 1}, "data.num_workers"),
    ],
)
def test_resume_refuses_another_stream_layout(resumed_runs, shards, override, key):
    run_dir = resumed_runs[-1]
    data = run_config(run_dir, str(shards / "digits-*.tar"), checkpoint_every=5)
    if "data_files" in override:
        data["data"]["train"]["data_files"] = sorted(str(p) for p in shards.glob("digits-*.tar"))[:3]
    else:
        data["data"].update(override)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        train(config_from_dict(data), resume=True)


@pytest.mark.parametrize("edit", ["same size", "shorter"])
def test_resume_refuses_a_shard_rewritten_in_place(shards, tmp_path, edit):
    """The checkpoint records each shard's size and sha256: a shard with the same name and other
    content (one byte of a PNG flipped, or the shard cut short) is refused on resume, naming it;
    unchanged shards resume (test_training_resumed_mid_stream_equals_uninterrupted)."""
    import shutil

    for f in sorted(shards.glob("digits-*.tar")):
        shutil.copy(f, tmp_path / f.name)
    cfg = config_from_dict(run_config(tmp_path / "run", str(tmp_path / "digits-*.tar"), checkpoint_every=3))
    train(cfg, stop_at=3)
    state = load_training_state(resolve_checkpoint(tmp_path / "run"))["stream"]
    victim = sorted(tmp_path.glob("digits-*.tar"))[1]
    assert state["shard_contents"][str(victim)]["bytes"] == victim.stat().st_size
    data = bytearray(victim.read_bytes())
    if edit == "same size":
        at = data.index(b"IDAT") + 8  # inside the first image's pixel data
        data[at] ^= 0xFF
    else:
        data = data[: len(data) - 1024]
    victim.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"data\.train\.data_files': shard .*{victim.name} was rewritten"):
        train(cfg, resume=True)


@pytest.mark.parametrize("kind", ["png", "wav"])
def test_corrupt_member_is_skipped_and_counted_or_raised(tmp_path, pre, kind):
    if kind == "png":  # shuffle_buffer 1 keeps the shard's order: the bad sample is the 4th read
        write_shards(digit_rows(0, 12, bad="digit0003"), tmp_path, 12, prefix="bad")
        spec, bad = digit_spec(str(tmp_path / "bad-*.tar"), shuffle_buffer=1), "digit0003"
    else:
        files = sorted(FSDD.glob("*_george_6.wav"))[:12]
        bad = files[3].stem
        write_shards(fsdd_rows(files, bad=bad), tmp_path, 12, prefix="bad")
        spec = {
            "source": "webdataset",
            "data_files": str(tmp_path / "bad-*.tar"),
            "streaming": True,
            "shuffle_buffer": 1,
            "columns": {"audio": "wav", "text": "txt"},
            "label_column": "json.label",
        }
    batches = list(stream({**spec, "on_error": "skip"}, pre, 4).epoch_batches())
    assert [len(b["keys"]) for b in batches] == [4, 4]  # 11 good samples: full batches, 3 dropped
    assert [int(b["skipped"]) for b in batches] == [1, 0]
    assert bad not in keys(batches)
    with pytest.raises(SampleError, match=rf"shard bad-000000\.tar key {bad}, column '{kind}'"):
        list(stream({**spec, "on_error": "raise"}, pre, 4).epoch_batches())


def test_damaged_member_the_builder_decodes_stops_naming_the_shard(tmp_path, pre):
    from align.errors import DataError

    rows = list(digit_rows(0, 12))
    rows[5]["json"] = b"{not json"  # .json is parsed by datasets' builder, not by a modality
    write_shards(rows, tmp_path, 12, prefix="bad")
    with pytest.raises(DataError, match=r"could not read a shard.*shard bad-000000\.tar key digit000"):
        list(stream(digit_spec(str(tmp_path / "bad-*.tar"), shuffle_buffer=1, on_error="skip"), pre, 4).epoch_batches())


def test_skipped_samples_reach_the_training_log(tmp_path):
    files = sorted(FSDD.glob("*_george_7.wav"))
    write_shards(fsdd_rows(files, bad=files[2].stem), tmp_path / "shards", 5, prefix="bad")
    res = train(
        config_from_dict(
            {
                "output_dir": str(tmp_path / "run"),
                "seed": 0,
                "model": {
                    "embed_dim": 16,
                    "modalities": {
                        "audio": {"options": dict(TINY_AST)},
                        "text": copy.deepcopy(TINY_MODALITIES["text"]),
                    },
                },
                "data": {
                    "train": {
                        "source": "webdataset",
                        "data_files": str(tmp_path / "shards" / "bad-*.tar"),
                        "streaming": True,
                        "shuffle_buffer": 1,
                        "on_error": "skip",
                        "columns": {"audio": "wav", "text": "txt"},
                    }
                },
                "train": {"batch_size": 4, "steps": 2, "progress": False, "log_every": 1},
            }
        )
    )
    assert res.skipped == 1
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert logged[-1]["data/skipped"] == 1


@pytest.mark.parametrize(
    "change, key",
    [
        ({"source": "sklearn-digits"}, "data.train.streaming"),
        ({"holdout": {"take": "train"}}, "data.train.streaming"),
        ({"where": {"json.label": {"lt": 5}}}, "data.train.streaming"),
        ({"max_samples": 10}, "data.train.streaming"),
        ({"caption_templates": ["the digit {}."]}, "data.train.streaming"),
        ({"shuffle_buffer": 0}, "data.train.shuffle_buffer"),
    ],
)
def test_config_refuses_what_cannot_stream(tmp_path, change, key):
    data = run_config(tmp_path, "x-*.tar")
    data["data"]["train"].update(change)
    with pytest.raises(ConfigError, match=f"config key '{key}'") as info:
        config_from_dict(data, validate_adapters=False)
    named = next(iter(change))
    assert named in str(info.value) or "label_names" in str(info.value)


@pytest.mark.parametrize("where", ["data.val", "eval.data"])
def test_only_training_data_streams(tmp_path, where):
    data = run_config(tmp_path, "x-*.tar")
    if where == "data.val":
        data["data"]["val"] = digit_spec("x-*.tar")
    else:
        data["eval"] = {"data": digit_spec("x-*.tar"), "retrieval": {"a": "image", "b": "text"}}
    with pytest.raises(ConfigError, match=f"config key '{where}.streaming'"):
        config_from_dict(data, validate_adapters=False)


def test_missing_shards_are_named(tmp_path, pre):
    from align.errors import DataError

    with pytest.raises(DataError, match="config key 'data.train.data_files': no shards match"):
        stream(digit_spec(str(tmp_path / "none-*.tar")), pre, 4)


def test_two_processes_stay_in_lockstep(tmp_path):
    # uneven shards (30, 30, 30, 12): the process holding the short one runs out first each epoch,
    # and both end the epoch there, so they make the same steps and never wait on each other
    write_shards(digit_rows(0, 90), tmp_path, 30, prefix="a")
    write_shards(digit_rows(90, 102), tmp_path, 12, prefix="b")
    data = run_config(tmp_path / "run", str(tmp_path / "[ab]-*.tar"), steps=8)
    data["data"]["num_workers"] = 1
    data["train"]["batch_size"] = 8
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    env = launch_env()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "align",
        "train",
        str(cfg_file),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = load_training_state(resolve_checkpoint(tmp_path / "run"))["stream"]
    assert state["world_size"] == 2 and sorted(state["processes"]) == [0, 1]
    # 60 vs 42 samples (one worker, batches of 8): 7 vs 5 batches, so each epoch is 5 steps on both,
    # and step 8 is batch 3 of epoch 1 on both (without the lockstep one would still be in epoch 0)
    assert [(state["processes"][r]["epoch"], state["processes"][r]["batches"]) for r in (0, 1)] == [(1, 3)] * 2
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == list(range(1, 9))


def test_fsdd_shards_config_trains(tmp_path, monkeypatch):
    """configs/fsdd_shards.yaml as documented: write shards with `align shards`, train."""
    monkeypatch.chdir(REPO)  # the configs read ../shared/data from the checkout root
    assert (
        align_main(
            [
                "shards",
                "configs/fsdd-audio-text.yaml",
                str(tmp_path / "shards"),
                "--key",
                "eval.data",
                "--prefix",
                "fsdd",
                "--shard-size",
                "200",
            ]
        )
        == 0
    )  # the 600 test takes: 3 shards
    cfg = load_config(
        REPO / "configs" / "fsdd_shards.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            f"data.train.data_files={tmp_path / 'shards'}/fsdd-*.tar",
            "train.steps=2",
            "train.batch_size=8",
            "train.eval_at_end=false",
            "train.progress=false",
            "data.num_workers=1",
        ],
    )
    res = train(cfg)
    assert [s for s, _ in res.losses] == [1, 2] and all(np.isfinite(v) for _, v in res.losses)
    summary = json.loads((tmp_path / "run" / "data.json").read_text())
    assert summary["datasets"][0]["classes"][7]["name"] == "seven"  # json.label named by label_names


def test_a_misspelled_stream_source_fails_at_once_naming_the_builder(tmp_path):
    from align.data.streaming import open_stream

    (tmp_path / "a-000000.tar").write_bytes(b"")
    spec = DatasetSpec(
        source="webdatset", data_files=str(tmp_path / "a-*.tar"), streaming=True, columns={"text": "txt"}
    )
    with pytest.raises(
        DataError, match=r"config key 'data.train.source': unknown source 'webdatset'; did you mean 'webdataset'"
    ):
        open_stream(spec)
