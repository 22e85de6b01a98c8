"""align.objectives.tiled against open_clip's dense losses: values and gradients (float64, small batches,
tile sizes that do not divide them; float32 at B=4096), the same per-process values and gradients as
the dense losses under a 2-process gloo gather, no [B, B] allocation, and the config's choice
between dense and tiled.

Run as a script, this file is the worker of the 2-process test (see ``_worker``).
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from open_clip import loss as oc_loss

from align.objectives import factory, losses
from align.objectives import tiled as tiled_losses
from align.objectives.tiled import TiledClipLoss, TiledSigLipLoss
from tests.support.gloo_world import run_world, worker_main
from tests.support.losses import pair_inputs, value_and_grads

REPO = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-6, 1e-12  # float64, as tests/objectives/test_losses.py
F32_RTOL = 1e-4  # float32, relative to the norm of the reference

pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = ["value", "d/d a", "d/d b", "d/d log(logit_scale)", "d/d logit_bias"]


def _compare(ours, ref, check) -> None:
    (v_ours, g_ours), (v_ref, g_ref) = ours, ref
    assert len(g_ours) == len(g_ref)
    for name, x, y in zip(NAMES, [v_ours, *g_ours], [v_ref, *g_ref]):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        check(x, y, name)


def _close64(x, y, name):
    torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def _close32(x, y, name):
    err = ((x - y).norm() / y.norm().clamp_min(1e-30)).item()
    assert err <= F32_RTOL or (x - y).abs().max() <= 1e-7, f"{name}: relative error {err:.2e}"


BATCHES = [1, 2, 5, 10, 23]
TILES = [1, 3, 7]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_tiled_clip_matches_open_clip(batch, tile, bias):
    a, b, log_scale, logit_bias = pair_inputs(batch, 16, seed=100 * batch + tile, bias=bias)
    ref = value_and_grads(oc_loss.ClipLoss(), a, b, log_scale, logit_bias)
    for local in (True, False):  # one process: local_loss must not matter
        ours = value_and_grads(
            TiledClipLoss(local_loss=local, rank=0, world_size=1, tile_size=tile), a, b, log_scale, logit_bias
        )
        _compare(ours, ref, _close64)
    if batch > 1:  # the check has teeth
        assert ref[0] > 0 and all(g.abs().max() > 0 for g in ref[1][:3])


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_tiled_siglip_matches_open_clip(batch, tile, bias):
    a, b, log_scale, logit_bias = pair_inputs(batch, 16, seed=7 + 100 * batch + tile, bias=bias)
    ref = value_and_grads(oc_loss.SigLipLoss(), a, b, log_scale, logit_bias)
    ours = value_and_grads(TiledSigLipLoss(rank=0, world_size=1, tile_size=tile), a, b, log_scale, logit_bias)
    _compare(ours, ref, _close64)
    assert ref[0] > 0 and all(g.abs().max() > 0 for g in ref[1])


@pytest.mark.parametrize("tile", [1024, 1000])
def test_float32_large_batch(tile):
    """B=4096, float32: relative error <= 1e-4 against open_clip (tile 1000 leaves a ragged edge)."""
    a, b, log_scale, logit_bias = pair_inputs(4096, 64, seed=tile, bias=True, dtype=torch.float32)
    with torch.no_grad():
        log_scale.fill_(math.log(100.0))  # the sharpest temperature CLIP training allows
    pairs = [
        (TiledClipLoss(tile_size=tile), oc_loss.ClipLoss(), None),
        (TiledSigLipLoss(tile_size=tile), oc_loss.SigLipLoss(), logit_bias),
    ]
    for ours, ref, bias in pairs:
        _compare(value_and_grads(ours, a, b, log_scale, bias), value_and_grads(ref, a, b, log_scale, bias), _close32)


def test_no_grad_and_mixed_requires_grad():
    """Under no_grad only the value is computed; a frozen temperature gets no gradient."""
    a, b, log_scale, logit_bias = pair_inputs(9, 8, seed=5, bias=True)
    for ours, ref in [
        (TiledClipLoss(tile_size=4), oc_loss.ClipLoss()),
        (TiledSigLipLoss(tile_size=4), oc_loss.SigLipLoss()),
    ]:
        with torch.no_grad():
            v = ours(a, b, log_scale.exp(), logit_bias)
            _close64(v, ref(a, b, log_scale.exp(), logit_bias), "no_grad value")
        assert not v.requires_grad
        scale = log_scale.detach().exp()
        (ga,) = torch.autograd.grad(ours(a, b.detach(), scale, logit_bias.detach()), [a])
        (ra,) = torch.autograd.grad(ref(a, b.detach(), scale, logit_bias.detach()), [a])
        _close64(ga, ra, "d/d a")


# --- two processes (gloo): the tiled loss equals the dense one, per process ---------------------

PER_PROCESS, DIM, TILE = 5, 8, 3
DIST_CASES = {  # name -> (dense, tiled, bias)
    "clip-local": (lambda r, w: losses.ClipLoss(True, r, w), lambda r, w: TiledClipLoss(True, r, w, TILE), False),
    "clip-global": (lambda r, w: losses.ClipLoss(False, r, w), lambda r, w: TiledClipLoss(False, r, w, TILE), False),
    "clip-bias": (lambda r, w: losses.ClipLoss(True, r, w), lambda r, w: TiledClipLoss(True, r, w, TILE), True),
    "siglip": (lambda r, w: losses.SigLipLoss(r, w), lambda r, w: TiledSigLipLoss(r, w, TILE), True),
}


def _local_leaves(rank: int, bias: bool):
    """This rank's rows of a fixed global batch, as fresh leaves."""
    a, b, log_scale, logit_bias = (
        t.detach() if t is not None else None for t in pair_inputs(2 * PER_PROCESS, DIM, seed=42, bias=bias)
    )
    rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
    leaf = lambda t: None if t is None else t.clone().requires_grad_()  # noqa: E731
    return leaf(a[rows]), leaf(b[rows]), leaf(log_scale), leaf(logit_bias)


def _worker(rank: int, world: int) -> dict:
    results = {}
    for case, (dense, tiled, bias) in DIST_CASES.items():
        results[case] = {
            kind: value_and_grads(make(rank, world), *_local_leaves(rank, bias))
            for kind, make in (("dense", dense), ("tiled", tiled))
        }
    return results


def test_two_process_gather_matches_dense(tmp_path):
    per_rank = run_world(__file__, 2, tmp_path)
    for case in DIST_CASES:
        for rank, results in enumerate(per_rank):
            _compare(
                results[case]["tiled"],
                results[case]["dense"],
                lambda x, y, name: _close64(x, y, f"{case} rank {rank} {name}"),
            )
    # and the processes' mean is the one-process loss of the global batch
    a, b, log_scale, bias = pair_inputs(2 * PER_PROCESS, DIM, seed=42, bias=True)
    for case, ref in [("clip-local", oc_loss.ClipLoss()), ("siglip", oc_loss.SigLipLoss())]:
        value = ref(a, b, log_scale.exp(), bias if case == "siglip" else None).detach()
        _close64(sum(r[case]["tiled"][0] for r in per_rank) / 2, value, f"{case} mean over processes")


# --- memory: no [B, B] tensor ----------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import sys, torch
    from align.objectives.tiled import TiledClipLoss
    torch.set_num_threads(1)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    B, d = int(sys.argv[1]), int(sys.argv[2])
    a = torch.nn.functional.normalize(torch.randn(B, d), dim=-1).requires_grad_()
    b = torch.nn.functional.normalize(torch.randn(B, d), dim=-1).requires_grad_()
    s = torch.tensor(4.6, requires_grad=True)
    TiledClipLoss(tile_size=512)(a[:600], b[:600], s.exp()).backward()  # warm up lazy allocations
    a.grad = b.grad = s.grad = None
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS")
    TiledClipLoss(tile_size=512)(a, b, s.exp()).backward()
    print(status("VmHWM") - base)
""")


def test_memory_never_holds_the_logit_matrix():
    """B=16384: the [B, B] float32 logits alone would be 1 GiB (open_clip peaks at ~3.5x that);
    forward + backward must stay under 1/8 of it (measured: ~10 MiB)."""
    batch, dim = 16384, 32
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(batch), str(dim)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = int(proc.stdout.split()[-1])
    assert extra < batch * batch * 4 / 8, f"peak extra RSS {extra / 2**20:.0f} MiB"


# --- choosing dense or tiled from the config -------------------------------------------------


def _config(**model):
    from align.config.schema import config_from_dict
    from tests.support.tiny import TINY_MODALITIES

    def make(batch_size: int):
        return config_from_dict(
            {
                "model": {"embed_dim": 16, "modalities": copy.deepcopy(TINY_MODALITIES), **model},
                "data": {"train": {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}}},
                "train": {"batch_size": batch_size},
            },
            validate_adapters=False,
        )

    return make


@pytest.mark.parametrize(
    "model,batch,world,expected",
    [
        ({}, 64, 1, losses.ClipLoss),  # auto, small: dense
        ({}, 4095, 2, losses.ClipLoss),  # auto, global 8190 < 8192
        ({}, 4096, 2, TiledClipLoss),  # auto, global 8192
        ({"loss": "siglip"}, 8192, 1, TiledSigLipLoss),
        ({"loss_tile_above": 100}, 64, 2, TiledClipLoss),
        ({"loss_tiling": "on"}, 8, 1, TiledClipLoss),
        ({"loss_tiling": "on", "loss": "siglip"}, 8, 1, TiledSigLipLoss),
        ({"loss_tiling": "off"}, 65536, 4, losses.ClipLoss),
    ],
)
def test_config_selects_loss(model, batch, world, expected):
    from align.objectives.task import ContrastiveTask

    cfg = _config(loss_tile_size=256, **model)(batch)
    task = ContrastiveTask.from_config(cfg, model=None, rank=world - 1, world_size=world)
    assert type(task.loss_fn) is expected
    assert task.loss_fn.dist() == (world - 1, world)
    if expected in (TiledClipLoss, TiledSigLipLoss):
        assert task.loss_fn.tile_size == 256
    if expected in (TiledClipLoss, losses.ClipLoss):
        assert task.loss_fn.local_loss is cfg.train.local_loss


def test_config_tiling_defaults_and_validation():
    from align.errors import ConfigError

    cfg = _config()(64)
    assert (cfg.model.loss_tiling, cfg.model.loss_tile_size, cfg.model.loss_tile_above) == ("auto", 1024, 8192)
    with pytest.raises(ConfigError, match="loss_tile_size"):
        _config(loss_tile_size=0)(64)
    with pytest.raises(ConfigError, match="loss_tiling"):
        _config(loss_tiling="yes")(64)


def test_loss_without_tiled_form(monkeypatch):
    """'on' for a loss with no tiled form names model.loss_tiling; 'auto' falls back to dense."""
    from align.errors import ConfigError

    monkeypatch.delitem(tiled_losses.TILED, "siglip")
    with pytest.raises(ConfigError, match=r"model\.loss_tiling.*'siglip' has no tiled form"):
        factory.build_loss("siglip", tiling="on", local_loss=True)
    assert type(factory.build_loss("siglip", tiling="auto", local_loss=True)) is losses.SigLipLoss


def test_shipped_configs_stay_dense():
    """auto must not change the results of the configs in configs/: their global batches are small."""
    from align.config.schema import load_config

    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path, validate_adapters=False)
        assert factory.tiling_mode(cfg.model.loss_tiling, cfg.train.batch_size, cfg.model.loss_tile_above) == "off"


if __name__ == "__main__":  # the 2-process test's worker
    worker_main(_worker)
