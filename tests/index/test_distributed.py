"""``accelerate launch -m align index build`` with 2 gloo processes builds the index one process
builds: the same ids, vectors equal to 1e-6, the same metadata (issue 23 item 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.app.cli import main
from align.index.embedding_index import EmbeddingIndex
from tests.index.test_build import DATA
from tests.index.test_build import built as built  # noqa: F401  (fixture: a tiny checkpoint + index)
from tests.support.gloo_world import free_port, launch_env

REPO = Path(__file__).resolve().parents[2]


def vectors(idx: EmbeddingIndex) -> dict[int, np.ndarray]:
    return {int(i): idx.index.reconstruct(int(i)) for i in idx.ids}


def test_two_processes_build_the_single_process_index(built, tmp_path):
    ckpt, _ = built
    args = ["index", "build", "--checkpoint", str(ckpt), "--modality", "image", "--data", DATA, "--chunk-rows", "5"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "two"
    for _attempt in range(2):  # the port may be taken between free_port() and the launch
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--main_process_port", str(free_port()), "-m", "align", *args, "--out", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    if proc.returncode != 0:
        pytest.fail(f"accelerate launch exited {proc.returncode}\n{proc.stderr[-4000:]}", pytrace=False)
    assert f"indexed 24 image items (Flat) into {out}" in proc.stdout
    assert not (tmp_path / ".two.shards").exists()  # the processes' shares are removed after the merge
    one, two = EmbeddingIndex.load(tmp_path / "one"), EmbeddingIndex.load(out)
    assert sorted(one.ids.tolist()) == sorted(two.ids.tolist()) == list(range(24))
    a, b = vectors(one), vectors(two)
    assert max(float(np.abs(a[i] - b[i]).max()) for i in a) <= 1e-6
    assert all(one.get_metadata(i) == two.get_metadata(i) for i in a)
