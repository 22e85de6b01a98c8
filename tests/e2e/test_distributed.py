"""Data-parallel training equals one process holding the global batch.

tests/support/dist_worker.py runs under ``torch.distributed.run`` (gloo, CPU) once with one process
holding the whole global batch of 8 and once with two processes holding 4 each. Both wrap the
model like align's trainer (Accelerate + DDP), gather features across processes with gradients
and backprop. Losses, every DDP-averaged gradient and the parameters after one
``align.app.trainer.train_step`` must agree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.gloo_world import free_port, launch_env

WORKER = Path(__file__).resolve().parents[1] / "support" / "dist_worker.py"
REPO = WORKER.parents[2]
CASES = ["clip-local", "clip-global", "siglip", "clip-gradcache"]  # dist_worker.CASES

# float32: the two runs sum the same terms in different orders (and over gloo).
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5  # per element, plus an absolute floor of GRAD_RTOL * max|grad| of that tensor
# AdamW's first step is lr * g / (|g| + eps) (eps = 1e-6): an element whose gradient is near eps
# turns float32 rounding in g into a visible change of its update, so parameters are compared with
# an absolute floor that is a small fraction of one step (a real mismatch moves elements by ~lr).
PARAM_RTOL, STEP_FRACTION = 1e-5, 1e-2
UPDATE_NORM_RTOL = 1e-3


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def launch(nproc: int, tmp: Path, probe: bool = False) -> dict:
    out = tmp / f"result-{nproc}.pt"
    env = launch_env(TRANSFORMERS_OFFLINE="1")
    for attempt in range(2):  # the port may be taken between free_port() and the launch
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(WORKER),
            "--out",
            str(out),
            "--workdir",
            str(tmp / f"work-{nproc}"),
        ]
        if probe:
            cmd.append("--probe")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    if proc.returncode != 0:
        pytest.fail(
            f"dist_worker with --nproc_per_node {nproc} exited with {proc.returncode}\n"
            f"command: {' '.join(cmd)}\n--- stderr ---\n{_tail(proc.stderr)}\n"
            f"--- stdout ---\n{_tail(proc.stdout, 2000)}",
            pytrace=False,
        )
    if not out.is_file():
        pytest.fail(f"dist_worker exited 0 but wrote no {out}\n{_tail(proc.stderr)}", pytrace=False)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp("dist")
    return {1: launch(1, tmp), 2: launch(2, tmp, probe=True)}


def test_worker_really_ran_data_parallel(runs):
    for case in CASES:
        one, two = runs[1][case], runs[2][case]
        assert one["world_size"] == 1 and one["local_batch"] == 8
        assert two["world_size"] == 2 and two["local_batch"] == 4
        assert two["distributed_type"].endswith("MULTI_CPU")
        assert two["wrapper"] == "DistributedDataParallel"
        # DDP left the same averaged gradients on both ranks
        sums = two["rank_grad_sums"]
        assert sums.shape[0] == 2 and torch.isfinite(sums).all()
        torch.testing.assert_close(sums[1], sums[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_match_single_process(runs, case):
    one, two = runs[1][case], runs[2][case]
    torch.testing.assert_close(two["loss"], one["loss"], rtol=LOSS_RTOL, atol=0)
    assert one["loss"] > 0
    if case == "clip-global":  # every rank scores the whole gathered batch
        torch.testing.assert_close(two["local_loss_value"], one["loss"], rtol=LOSS_RTOL, atol=0)
    else:  # rank 0 only scores its own rows: its loss is not the global one, the mean over ranks is
        assert not torch.allclose(two["local_loss_value"], one["loss"], rtol=1e-3, atol=0)
    assert one["param_names"] == two["param_names"]
    assert len(one["grads"]) > 10
    for name in one["param_names"]:
        ref, got = one["grads"][name], two["grads"][name]
        assert ref is not None and got is not None, f"{name}: no gradient"
        scale = ref.abs().max()
        assert scale > 0, f"{name}: gradient is all zero in the single-process run"
        torch.testing.assert_close(
            got,
            ref,
            rtol=GRAD_RTOL,
            atol=GRAD_RTOL * scale.item(),
            msg=lambda m, name=name: f"gradient of {name} ({case}): {m}",
        )
    if case == "siglip":
        assert "logit_bias" in one["grads"]
    assert "logit_scale" in one["grads"]


@pytest.mark.parametrize("case", CASES)
def test_one_train_step_matches_single_process(runs, case):
    one, two = runs[1][case], runs[2][case]
    # same seed -> same initial weights; same params -> train_step's loss is the one measured above
    for name, p in one["params_before"].items():
        assert torch.equal(p, two["params_before"][name]), name
    torch.testing.assert_close(one["step_loss"], one["loss"])
    torch.testing.assert_close(two["step_loss"], two["loss"])
    # one scheduler step per optimizer step, whatever the number of processes
    assert one["lr_after"] == two["lr_after"] > 0
    lr = max(one["lr_after"], 1e-12)
    for name in one["param_names"]:
        before = one["params_before"][name]
        upd_one = one["params_after"][name] - before
        upd_two = two["params_after"][name] - before
        assert upd_one.abs().max() > 0, f"{name}: train_step did not change it"
        torch.testing.assert_close(
            two["params_after"][name],
            one["params_after"][name],
            rtol=PARAM_RTOL,
            atol=STEP_FRACTION * lr,
            msg=lambda m, name=name: f"{name} after one step ({case}): {m}",
        )
        rel = (upd_two - upd_one).norm() / upd_one.norm()
        assert rel <= UPDATE_NORM_RTOL, f"{name}: update differs by {rel:.2e} (relative norm)"


def test_gradcache_equals_the_plain_step_on_one_and_two_processes(runs):
    """micro-batches of 2 (GradCache, align/training/gradcache.py) give the plain full-batch gradients: on one
    process holding all 8 rows and on two processes holding 4 each (gather + one all-reduce)."""
    ref = runs[1]["clip-local"]
    for world in (1, 2):
        got = runs[world]["clip-gradcache"]
        torch.testing.assert_close(got["loss"], ref["loss"], rtol=LOSS_RTOL, atol=0)
        for name in ref["param_names"]:
            scale = ref["grads"][name].abs().max().item()
            torch.testing.assert_close(
                got["grads"][name],
                ref["grads"][name],
                rtol=GRAD_RTOL,
                atol=GRAD_RTOL * scale,
                msg=lambda m, n=name: f"{n} ({world} proc): {m}",
            )


def test_build_accelerator_sees_all_processes_on_cpu(runs):
    if torch.cuda.is_available():
        pytest.skip("about machines without a GPU")
    assert runs[2]["probe_num_processes_without_cpu_flag"] == 2


def test_two_process_training_with_eval_shares_encoding_and_agrees(tmp_path):
    """`align train` under 2 processes with in-training evaluation: no rank-0-only crash, and the
    sharded encoding gives exactly the metrics a 1-process evaluation of the final checkpoint gives."""
    import json

    from align.eval.runner import evaluate
    from align.model.checkpoint import load_model
    from align.training.loop import flat_eval_metrics

    env = launch_env()
    out = tmp_path / "run"
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
        str(REPO / "configs" / "demo-digits.yaml"),
        f"output_dir={out}",
        "train.steps=4",
        "train.batch_size=16",
        "train.eval_every=4",
        "train.progress=false",
        "eval.data.max_samples=61",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, _tail(proc.stderr)
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    in_training = next(r for r in logged if "eval/zeroshot/top1" in r)
    model, cfg = load_model(out)
    again = flat_eval_metrics(evaluate(model, cfg.eval))
    for key, value in again.items():
        assert in_training[f"eval/{key}"] == pytest.approx(value, abs=1e-6), key
