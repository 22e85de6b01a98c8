"""Two (or more) CPU processes over gloo for the loss tests: the test file relaunches itself as
the workers (``python TEST_FILE --rank R --world W --port P --out OUT``), each worker saves its
results with torch.save, and the test reads them back. Shared by tests/objectives/test_tiled.py,
test_variants.py, test_multiway.py and tests/data/test_mixture.py."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port free right now (a launcher retries if another process takes it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_env(**extra: str) -> dict[str, str]:
    """The environment for an ``align`` run started under ``torch.distributed.run`` from a test: this
    process's, without Accelerate's and the launcher's own variables, one OpenMP thread per process,
    offline, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_") and k not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def run_world(script: str, world: int, tmp_path: Path) -> list:
    """Run ``script`` as ``world`` gloo workers; their saved results in rank order."""
    out = str(tmp_path / "rank{rank}.pt")
    # the test file runs as a script: the repository root on its path finds tests.support
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for _attempt in range(2):  # the port may be taken between free_port() and the launch
        port = free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, script, "--rank", str(r), "--world", str(world), "--port", str(port), "--out", out],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(world)
        ]
        logs = [p.communicate(timeout=300)[0] for p in procs]
        if all(p.returncode == 0 for p in procs) or "address already in use" not in "".join(logs).lower():
            break
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return [torch.load(out.format(rank=r)) for r in range(world)]


def worker_main(work: Callable[[int, int], object]) -> None:
    """The worker side: parse the arguments, join the group, save ``work(rank, world)``, leave."""
    import torch.distributed as dist

    p = argparse.ArgumentParser()
    for name in ("rank", "world", "port"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=args.world)
    torch.save(work(args.rank, args.world), args.out.format(rank=args.rank))
    dist.barrier()  # neither process tears gloo down while the other still talks to it
    dist.destroy_process_group()
