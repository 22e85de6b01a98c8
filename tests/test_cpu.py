"""align.cpu: passive waiting on a busy machine, one thread while others want the cores, and a
user's own setting always wins. The busy neighbours are real processes (pure-Python spin loops)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from align.cpu import ThreadGovernor, apply_cpu_defaults, busy_now, others_runnable

OWN = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ALIGN_CPU_DEFAULTS", "OMP_NUM_THREADS")
needs_proc = pytest.mark.skipif(others_runnable() is None, reason="no /proc/loadavg here")


@contextmanager
def busy_neighbours(n: int = 2):
    """``n`` spinning processes that are not our children (a DataLoader worker, a child, is not
    "another process" to align.cpu): started through a shell that exits at once."""
    pids = []
    try:
        for _ in range(n):
            out = subprocess.run(
                ["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            pids.append(int(out.stdout.strip()))
        time.sleep(0.5)  # running, not starting
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_passive_waiting_only_when_busy_and_only_where_the_user_has_not_chosen():
    env: dict[str, str] = {}
    assert apply_cpu_defaults(env, busy=True) == {"OMP_WAIT_POLICY": "PASSIVE"} and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert apply_cpu_defaults(quiet := {}, busy=False) == {} and quiet == {}  # quiet: torch's spin-waiting
    for own in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "100000"}, {"ALIGN_CPU_DEFAULTS": "0"}):
        env = dict(own)
        assert apply_cpu_defaults(env, busy=True) == {} and env == own


@needs_proc
def test_the_cli_chooses_passive_beside_busy_processes_before_torch_loads():
    clean = {k: v for k, v in os.environ.items() if k not in OWN}
    code = (
        "import os, sys\nfrom align.app.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"
    )
    with busy_neighbours(2):
        assert busy_now()
        out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False PASSIVE", out.stderr
    late = (
        "import torch, os\nfrom align.cpu import apply_cpu_defaults\n"
        "print(apply_cpu_defaults(busy=True), os.environ.get('OMP_WAIT_POLICY'))"
    )
    out = subprocess.run([sys.executable, "-c", late], env=clean, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "{} None", out.stderr  # torch first: nothing set that could not apply


@needs_proc
def test_governor_drops_to_one_thread_under_contention_and_restores_after(monkeypatch):
    for k in OWN:
        monkeypatch.delenv(k, raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gov = ThreadGovernor(sample_s=0.05, halflife_s=0.3, calm_s=0.5)
        assert gov.active
        with busy_neighbours(2):
            deadline = time.monotonic() + 10
            while torch.get_num_threads() != 1 and time.monotonic() < deadline:
                gov.tick()
                time.sleep(0.02)
            assert torch.get_num_threads() == 1 and gov.reduced
        deadline = time.monotonic() + 20
        while torch.get_num_threads() != 2 and time.monotonic() < deadline:
            gov.tick()
            time.sleep(0.02)
        assert torch.get_num_threads() == 2 and not gov.reduced and gov.switches == 2
    finally:
        torch.set_num_threads(previous)


def test_governor_leaves_a_users_thread_count_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not ThreadGovernor().active
