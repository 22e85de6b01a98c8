"""Subprocess helpers for tests/training/test_resume.py: an ``align train`` run in the background, its
DataLoader workers (found in /proc, so none outlives a test), the run lock's holder record."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Holds a run lock, forks a child that exits normally (its copy of the lock object is collected),
# checks from outside that the lock is still held (prints the refusal's exit code, 1), then forks
# a child that outlives the parent (as an orphaned DataLoader worker does), prints its pid and
# SIGKILLs itself.
FORK = """
import os, signal, subprocess, sys, time
from align.training.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
if os.fork() == 0:  # exits normally: its copy of the lock object is collected and released
    sys.exit(0)
os.wait()
try_lock = "from align.training.runlock import RunLock; import sys; RunLock(sys.argv[1]).acquire()"
print(subprocess.run([sys.executable, "-c", try_lock, sys.argv[1]], capture_output=True).returncode, flush=True)
child = os.fork()
if child == 0:  # outlives its parent, as an orphaned DataLoader worker does
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)  # not the test's pipes: they would stay open for as long
    time.sleep(30)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def align_train(cfg_file: Path) -> subprocess.Popen:
    """``align train CFG`` in a subprocess; its output goes to CFG.out (a file, not a pipe: a pipe
    stays open while any child it started lives on)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(cfg_file.with_suffix(".out"), "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "align", "train", str(cfg_file)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log = cfg_file.with_suffix(".out")
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log.read_text()[-4000:]


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes whose parent is ``pid`` (a run's DataLoader workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[1] == str(pid):
            found.append((int(entry.name), fields[19]))
    return found


def kill_if_still(processes: list[tuple[int, str]]) -> None:
    """SIGKILL these processes if they still run, by pid and start time (a reused pid is not ours)."""
    for pid, started in processes:
        fields = proc_stat(pid)
        if fields and fields[19] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"`align train` exited ({proc.returncode}) before {what}:\n{output(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def holder_pid(out: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((out / ".lock.json").read_text())["pid"]
    return None
