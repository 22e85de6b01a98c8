"""Several training sets in one run (``data.mix``): rows with a subset of the modalities.

The masked loss is compared with the loss computed directly on each pair's rows; two gloo
processes holding different subsets must give the loss and gradients of one process holding
both; the weighted sampler is seeded by epoch and honours its weights; a real run on
scikit-learn digits (image <-> text) mixed with wine (tabular <-> text) learns and resumes
exactly; a pair whose modalities never meet in one set is a config error naming its key.
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support.gloo_world import free_port
from tests.support.tiny import TINY_MODALITIES

pytestmark = pytest.mark.usefixtures("one_thread")


def mix_config(tmp_path, steps: int = 40, **train) -> dict:
    mods = copy.deepcopy(TINY_MODALITIES)
    mods["image"]["options"]["mean"] = [0.5] * 3
    mods["image"]["options"]["std"] = [0.5] * 3
    mods["tabular"] = {"options": {"encoder": "mlp", "widths": [32], "norm": "layer"}}
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "model": {"embed_dim": 16, "modalities": mods},
        "data": {
            "mix": [
                {
                    "weight": 2.0,
                    "data": {
                        "source": "sklearn-digits",
                        "split": "train",
                        "columns": {"image": "image", "text": "caption"},
                        "label_column": "label",
                    },
                },
                {
                    "weight": 1.0,
                    "data": {
                        "source": "sklearn-table",
                        "split": "train",
                        "load_kwargs": {"name": "wine", "test_fraction": 0.3, "seed": 0},
                        "columns": {"tabular": "features", "text": "label_captions"},
                        "label_column": "label",
                        "caption_templates": ["a wine from {}.", "an italian wine of {}."],
                    },
                },
            ]
        },
        "train": {
            "batch_size": 32,
            "steps": steps,
            "lr": 2e-3,
            "weight_decay": 0.0,
            "progress": False,
            "log_every": 5,
            **train,
        },
    }


# ---- config ---------------------------------------------------------------------------------


def test_default_pairs_are_those_that_meet_in_a_set(tmp_path):
    from align.config.schema import config_from_dict

    cfg = config_from_dict(mix_config(tmp_path))
    assert cfg.loss_pairs() == [("image", "text"), ("text", "tabular")]  # never image <-> tabular
    assert cfg.data.train_modalities() == ["image", "text", "tabular"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda c: c["train"].update(pairs=[["image", "tabular"]]),
            r"'train.pairs\[0\]': image and tabular never appear together",
        ),
        (lambda c: c["train"].update(anchor="image"), r"'train.anchor': tabular and image never appear together"),
        (
            lambda c: c["train"].update(
                pairs=[], multiway={"loss": "symile", "modalities": ["image", "text", "tabular"]}
            ),
            r"'train.multiway.modalities': image and text and tabular never appear together",
        ),
        (
            lambda c: c["data"].update(train=c["data"]["mix"][0]["data"]),
            r"'data.train' and data.mix: give one, not both",
        ),
        (lambda c: c["data"].pop("mix"), r"'data.train' is required"),
        (
            lambda c: unlabel(c["data"]["mix"][1]["data"]) or c["model"].update(loss="multi_positive"),
            r"'model.loss': loss 'multi_positive' .* needs data.mix\[1\].data.label_column",
        ),
        (
            lambda c: c["model"]["modalities"]["text"].update(cache="memory"),
            r"'model.modalities.text.cache': cannot be combined with data.mix",
        ),
        (lambda c: c["data"]["mix"][0].update(weight=0), r"'data.mix.0.weight'"),
        (
            lambda c: c["data"]["mix"][1]["data"]["columns"].update(audio="features"),
            r"'data.mix\[1\].data.columns.audio': modality 'audio' is not in model.modalities",
        ),
    ],
)
def test_bad_mixture_names_the_key(tmp_path, edit, match):
    from align.config.schema import config_from_dict
    from align.errors import ConfigError

    raw = mix_config(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def unlabel(spec: dict) -> None:
    """A set without labels (nor the captions made from them)."""
    spec.pop("label_column")
    spec.pop("caption_templates")
    spec["columns"]["text"] = "description"


def test_anchor_pairs_each_modality_with_the_anchor_it_meets(tmp_path):
    from align.config.schema import config_from_dict

    cfg = config_from_dict({**mix_config(tmp_path), "train": {"anchor": "text"}})
    assert cfg.loss_pairs() == [("image", "text"), ("tabular", "text")]


# ---- sampler --------------------------------------------------------------------------------


def test_sampler_is_seeded_by_epoch_and_honours_weights():
    from align.data.mixture import MixtureSampler

    s = MixtureSampler([300, 100], [1.0, 3.0], seed=0)
    first = list(s)
    assert list(s) == first and len(first) == 400  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first  # a function of (seed, epoch) only: a resumed run draws the same rows
    part = np.asarray(first) >= 300
    assert abs(part.mean() - 0.75) < 0.06  # weights 1 : 3
    second = np.asarray(first)[part] - 300  # ~300 draws from 100 rows: each row ~3 times, in cycles
    seen = np.bincount(second, minlength=100)
    assert seen.max() - seen.min() <= 1, seen
    assert len(set(second[:100].tolist())) == 100  # every row once before any twice
    assert len(set(np.asarray(first)[~part].tolist())) == (~part).sum()  # fewer draws than rows: no repeat


# ---- the masked loss ------------------------------------------------------------------------


def masked_case(seed: int = 0, n: int = 12):
    """Embeddings of a batch of n rows where each modality is present on some rows only."""
    g = torch.Generator().manual_seed(seed)
    present = {
        "image": torch.rand(n, generator=g) < 0.6,
        "tabular": torch.rand(n, generator=g) < 0.5,
        "text": torch.ones(n, dtype=torch.bool),
    }
    present["tabular"] &= ~present["image"]  # rows are image+text or tabular+text or text alone
    emb = {
        m: F.normalize(torch.randn(int(p.sum()), 16, generator=g, dtype=torch.float64), dim=-1)
        for m, p in present.items()
    }
    return present, emb


def task_for(cfg, world_size: int = 1):
    from align.model.align_model import AlignModel
    from align.objectives.task import ContrastiveTask

    cfg.model.modalities["tabular"].options.update(num_features=13, standardize=False)  # what training fits
    model = AlignModel(cfg.model).double()
    return ContrastiveTask.from_config(cfg, model, world_size=world_size), model


def test_masked_loss_is_each_pairs_loss_on_the_rows_that_have_both(tmp_path):
    from align.config.schema import config_from_dict

    cfg = config_from_dict(mix_config(tmp_path))
    task, model = task_for(cfg)
    present, emb = masked_case()
    emb = {m: e.requires_grad_() for m, e in emb.items()}
    loss = task.loss(emb, present=present)
    scale = model.logit_scale.exp().reshape(())

    def infonce(a, b):  # the paper's symmetric InfoNCE, written out
        logits = scale * a @ b.T
        labels = torch.arange(len(a))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    text_rows = torch.cumsum(present["text"].long(), 0) - 1
    refs = []
    for m in ("image", "tabular"):
        rows = present[m] & present["text"]
        refs.append(infonce(emb[m], emb["text"][text_rows[rows]]))
    torch.testing.assert_close(loss, (refs[0] + refs[1]) / 2)
    loss.backward()
    text_only = ~(present["image"] | present["tabular"])
    assert text_only.any()
    assert (emb["text"].grad[text_rows[text_only]] == 0).all()  # a row with no partner adds nothing
    assert (emb["text"].grad[text_rows[~text_only]].abs().sum(-1) > 0).all()


def test_a_pair_with_fewer_than_two_rows_is_left_out(tmp_path):
    from align.config.schema import config_from_dict

    cfg = config_from_dict(mix_config(tmp_path))
    task, model = task_for(cfg)
    present, emb = masked_case()
    present["tabular"][:] = False
    present["tabular"][int(torch.nonzero(~present["image"])[0])] = True  # one tabular row
    emb["tabular"] = emb["tabular"][:1]
    only_image = task.loss(emb, present=present)
    present["tabular"][:] = False
    torch.testing.assert_close(only_image, task.loss({k: v for k, v in emb.items() if k != "tabular"}, present=present))


def test_gradcache_on_a_mixed_batch_equals_the_full_batch_step(tmp_path):
    """GradCache (train.micro_batch_size) on a real mixed batch: each micro-batch encodes, per
    modality, only its rows that have it (some micro-batches have no tabular row at all); the
    parameter gradients equal one full-batch step's."""
    from accelerate import Accelerator

    from align.config.schema import config_from_dict
    from align.data.tables import load_table
    from align.training.engine import build_mixture_loader
    from align.training.gradcache import cached_loss

    cfg = config_from_dict(mix_config(tmp_path, micro_batch_size=4))
    task, model = task_for(cfg)
    model.float().train()
    tables = {k: load_table(spec, k) for k, spec, _ in cfg.data.train_parts()}
    batch = next(iter(build_mixture_loader(cfg, model, tables)))
    present = batch["present"]
    assert any(not present["tabular"][s : s + 4].any() for s in range(0, 32, 4))  # a micro-batch without it
    state = copy.deepcopy(model.state_dict())
    model.zero_grad(set_to_none=True)
    full = task(model, batch)
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for micro in (4, 8):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        loss, backward = cached_loss(Accelerator(cpu=True), model, task, batch, micro)
        backward()
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert loss.item() == pytest.approx(full.item(), rel=1e-6)
        assert set(got) == set(want) and any(n.startswith("adapters.tabular.") for n in got)
        for name, w in want.items():
            torch.testing.assert_close(
                got[name], w, rtol=1e-5, atol=1e-5 * float(w.abs().max()) + 1e-9, msg=f"micro {micro}: {name}"
            )


# ---- two processes --------------------------------------------------------------------------


def _worker(rank: int, world: int):
    """Rank r holds half the rows of one batch; its loss and the gradients of its embeddings."""
    from align.config.schema import config_from_dict

    cfg = config_from_dict(mix_config(__import__("pathlib").Path("/tmp")))
    present, emb = masked_case(n=16)
    half = slice(rank * 8, rank * 8 + 8)
    mine = {m: p[half] for m, p in present.items()}
    pos = {m: torch.cumsum(p.long(), 0) - 1 for m, p in present.items()}
    local = {m: emb[m][pos[m][half][mine[m]]].clone().requires_grad_() for m in emb if mine[m].any()}
    task, _ = task_for(cfg, world_size=world)
    loss = task.loss(local, present=mine)
    loss.backward()
    return {"loss": loss.detach(), "grads": {m: e.grad for m, e in local.items()}, "rows": mine}


def test_two_processes_equal_one_holding_both_halves(tmp_path):
    """Each process computes the global loss on the gathered rows; the gather's backward sums the
    processes' gradients, so each embedding's gradient is world_size x the single-process one
    (DDP's average over processes then gives the single-process parameter gradient)."""
    from align.config.schema import config_from_dict
    from tests.support.gloo_world import run_world

    results = run_world(__file__, 2, tmp_path)
    cfg = config_from_dict(mix_config(tmp_path))
    task, _ = task_for(cfg)
    present, emb = masked_case(n=16)
    emb = {m: e.clone().requires_grad_() for m, e in emb.items()}
    loss = task.loss(emb, present=present)
    loss.backward()
    for r in results:
        torch.testing.assert_close(r["loss"], loss.detach())
    for m in emb:
        pos = torch.cumsum(present[m].long(), 0) - 1
        for rank, r in enumerate(results):
            rows = present[m][rank * 8 : rank * 8 + 8]
            if rows.any():
                torch.testing.assert_close(r["grads"][m], 2 * emb[m].grad[pos[rank * 8 : rank * 8 + 8][rows]])


# ---- training on real data ------------------------------------------------------------------


def test_mixed_run_learns_and_feeds_each_tower_its_rows(tmp_path):
    from align.app.trainer import train
    from align.config.schema import config_from_dict

    cfg = config_from_dict(mix_config(tmp_path, steps=60))
    result = train(cfg)
    losses = [v for _, v in result.losses]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), losses
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    per_term = [r for r in log if "train/loss/image-text" in r]  # each term's loss is logged too
    assert len(per_term) == 12 and all("train/loss/text-tabular" in r for r in per_term[-3:])
    assert per_term[-1]["train/loss/image-text"] < per_term[0]["train/loss/image-text"]
    summary = (tmp_path / "run" / "data.json").read_text()
    assert "data.mix[1].data" in summary and "text <-> tabular" in summary
    assert '"share": 0.666' in summary  # weights 2 : 1


def test_mixed_run_with_a_validation_set_of_some_modalities(tmp_path):
    """data.val may feed a subset of the mixture's modalities (here image and text only); its loss
    goes through the same masked path, and a val set with a modality no training set has is refused."""
    from align.app.trainer import train
    from align.config.schema import config_from_dict
    from align.errors import ConfigError

    raw = mix_config(tmp_path, steps=10, val_every=5)
    raw["data"]["val"] = {
        "source": "sklearn-digits",
        "split": "test",
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    }
    result = train(config_from_dict(raw))
    assert [s for s, _ in result.val_losses] == [5, 10] and all(np.isfinite(v) for _, v in result.val_losses)
    raw["data"]["val"]["columns"]["audio"] = "image"
    raw["model"]["modalities"]["audio"] = {"options": {}}
    with pytest.raises(ConfigError, match=r"'data.val.columns': feeds modalities no training set has \(\['audio'\]\)"):
        config_from_dict(raw)


@pytest.mark.parametrize("momentum", [False, True])
def test_mixed_run_resumes_exactly(tmp_path, momentum):
    """Also with model.momentum (ALBEF queues): each modality's queue fills at its own rate (text is
    on every row, image and tabular on their sets' rows), and the queues resume exactly."""
    from align.app.trainer import train
    from align.config.schema import config_from_dict

    def cfg(out):
        raw = mix_config(out, steps=12, checkpoint_every=6)
        if momentum:
            raw["model"]["momentum"] = {"queue_size": 1000, "momentum": 0.9, "distill": 0.4}
        return config_from_dict(raw)

    full = train(cfg(tmp_path / "full"))
    first = train(cfg(tmp_path / "cut"), stop_at=6)
    second = train(cfg(tmp_path / "cut"), resume=True)
    resumed = first.losses + second.losses
    assert [s for s, _ in resumed] == [s for s, _ in full.losses]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in full.losses], rtol=1e-5)
    if momentum:
        mom = full.model.momentum
        assert mom.queue_ptr("text") == 12 * 32  # every row has text; fewer than 1,000 so far
        assert mom.queue_ptr("image") + mom.queue_ptr("tabular") == 12 * 32 and mom.queue_ptr("tabular") > 0
        for (name, p), q in zip(full.model.state_dict().items(), second.model.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)  # towers, EMA towers, queues


@pytest.mark.parametrize(
    "mixed, micro, momentum", [(True, None, False), (True, 4, False), (True, None, True), (False, None, False)]
)
def test_data_parallel_run_with_idle_towers_and_pair_temperatures(tmp_path, mixed, micro, momentum):
    """Two DDP processes (gloo) through ``align train``. Mixed: a rare second set and batches of 8,
    so most steps some process has no tabular row (its tower idle) or the tabular pair has under
    two rows and is left out; DDP needs every parameter's gradient on every process and the row
    gathers must run in the same order everywhere. Both: a temperature per pair, which leaves the
    shared one out of every term (this failed under DDP before it got a zero gradient). With GradCache
    (micro-batches of 4) the gradients are averaged by align itself, over the same parameters on every
    process. With momentum queues every modality's keys are gathered on every process, zero rows too."""
    import os
    import subprocess

    import yaml

    cfg = mix_config(tmp_path, steps=8, batch_size=8, micro_batch_size=micro)
    cfg["data"]["mix"][1]["weight"] = 0.05
    cfg["model"]["pair_temperatures"] = True
    if momentum:
        cfg["model"]["momentum"] = {"queue_size": 64, "momentum": 0.9}
    if not mixed:
        cfg["data"] = {"train": cfg["data"]["mix"][0]["data"]}
        cfg["model"]["modalities"].pop("tabular")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "align",
            "train",
            str(path),
        ],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [__import__("json").loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train/loss" in r][-1] == 8
    assert all(np.isfinite(r["train/loss"]) for r in log if "train/loss" in r)


SHARED = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(
    not (SHARED / "audio" / "fsdd").is_dir() or not (SHARED / "graph" / "tu").is_dir(), reason="shared data not found"
)
def test_six_modality_config_runs_as_it_is(tmp_path, monkeypatch):
    """configs/six-modalities.yaml, a few small steps: every set loads, every tower gets rows and
    a gradient, the checkpoint holds all six towers."""
    from align.app.trainer import train
    from align.config.schema import load_config
    from align.model.checkpoint import load_model

    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the config's data paths are relative to the checkout
    cfg = load_config(
        repo / "configs" / "six-modalities.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "train.steps=3",
            "train.batch_size=40",
            "train.progress=false",
            "train.eval_at_end=false",
            "data.num_workers=0",
            "train.warmup_steps=0",
            "train.checkpoint_every=1",
            "train.weight_decay=0",
        ],
    )
    result = train(cfg)
    assert len(result.losses) == 3 and all(np.isfinite(v) for _, v in result.losses)
    first, _ = load_model(tmp_path / "run" / "checkpoints" / "step-000001")
    last, _ = load_model(tmp_path / "run" / "checkpoints" / "step-000003")
    assert sorted(last.modalities) == ["audio", "graph", "image", "pointcloud", "text", "video"]
    for mod in last.modalities:  # no weight decay: a tower moves only if its rows gave it gradients
        moved = [not torch.equal(a, b) for a, b in zip(first.tower_parameters(mod), last.tower_parameters(mod))]
        assert any(moved), f"{mod} tower did not train"


if __name__ == "__main__":  # a gloo worker of test_two_processes_equal_one_holding_both_halves
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    from tests.support.gloo_world import worker_main

    worker_main(_worker)
