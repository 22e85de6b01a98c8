"""CPU thread defaults that degrade to a fair share when other processes want the cores, without
slowing a quiet machine.

torch's OpenMP threads (GNU libgomp) spin-wait between parallel regions: on a quiet machine that
saves a wake-up per op, but when other processes share the cores a spinning thread burns the time
slice a working thread needed, and a run can fall to a small fraction of its fair share (issue 21
item 10: Cora node<->text 420 samples/s quiet, 10 samples/s beside two busy processes). Measured on
this project's 2-core box (``benchmarks/cpu_contention.py``, table in benchmarks/README.md): beside
two busy processes CiteSeer node<->text falls from 663 to 63 samples/s with spin-waiting, the demo's
training from 432 to 113; passive waiting keeps them at 310 and 252 (about the fair half), but
always on it costs the demo's small ops ~24 % on a quiet machine (327 vs 428: a wake-up per op).
No one setting wins both, so align picks per situation:

* ``apply_cpu_defaults()`` (the CLI calls it first thing, before torch loads: libgomp reads its
  environment once) samples the other processes' runnable threads for a moment. Busy machine:
  ``OMP_WAIT_POLICY=PASSIVE``. Quiet machine: torch's spin-waiting, with the governor below.
* ``ThreadGovernor.tick()`` (the training loop calls it every step; it costs a clock read, and a
  few /proc reads every 0.2 s) keeps a moving average of other processes' runnable threads; when
  they want a core for a sustained few seconds it drops torch to one thread (no parallel regions,
  so nothing spins), and restores the threads once they have been gone for ~10 s. Only on Linux.

A user's own ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` / ``OMP_NUM_THREADS`` always wins (nothing is
set or changed), and ``ALIGN_CPU_DEFAULTS=0`` turns all of it off. A program that imports torch
itself before align gets torch's defaults and the governor only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DISABLE_ENV = "ALIGN_CPU_DEFAULTS"
WAIT_POLICY = "PASSIVE"
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def disabled(env: dict[str, str] | os._Environ = os.environ) -> bool:
    return env.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _runnable_threads(pid: str) -> int:
    count = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # a thread that just ended
        if text[text.rindex(")") + 2 :].startswith("R"):
            count += 1
    return count


def _runnable_here() -> int:
    """This process's threads, and its children's (DataLoader workers), running or runnable now."""
    children: set[str] = set()
    for listing in Path("/proc/self/task").glob("*/children"):
        try:
            children.update(listing.read_text().split())
        except OSError:
            continue
    return _runnable_threads("self") + sum(_runnable_threads(pid) for pid in children)


def others_runnable() -> float | None:
    """Other processes' runnable threads right now (``/proc/loadavg``'s instantaneous count less
    ours), or None where /proc does not tell."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, float(running - _runnable_here()))


def busy_now(samples: int = 5, interval_s: float = 0.02) -> bool:
    """Whether other processes want a core now: their runnable threads over a few quick samples."""
    seen = []
    for _ in range(samples):
        n = others_runnable()
        if n is None:
            return False
        seen.append(n)
        time.sleep(interval_s)
    return sum(seen) / len(seen) >= 0.5


def apply_cpu_defaults(environ: dict[str, str] | None = None, *, busy: bool | None = None) -> dict[str, str]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) when the machine is
    busy (``busy``, default: sampled now) and the user has not chosen. Returns what was set (empty
    when nothing was: quiet, the user's choice, disabled, or torch already loaded)."""
    env = os.environ if environ is None else environ
    if disabled(env) or any(k in env for k in USER_SETTINGS):
        return {}
    if environ is None and "torch" in sys.modules:
        return {}  # libgomp has read its settings already: changing them now would only mislead
    if not (busy_now() if busy is None else busy):
        return {}
    env["OMP_WAIT_POLICY"] = WAIT_POLICY
    return {"OMP_WAIT_POLICY": WAIT_POLICY}


class ThreadGovernor:
    """Drops torch to one thread while other processes want the cores, and restores it after.

    Call ``tick()`` from the thread that runs torch (OpenMP's thread count is per calling thread).
    Inactive when the user set ``OMP_NUM_THREADS`` or a wait policy, when align chose passive waiting
    (``OMP_WAIT_POLICY`` set: nothing spins), with one thread, or where /proc is missing."""

    def __init__(self, *, sample_s: float = 0.2, halflife_s: float = 2.0, busy: float = 0.75, calm_s: float = 10.0):
        import torch

        self.torch = torch
        self.threads = torch.get_num_threads()
        user = any(k in os.environ for k in ("OMP_NUM_THREADS", *USER_SETTINGS))
        alone = os.environ.get("LOCAL_WORLD_SIZE", "1") == "1"  # sibling trainers are not "others"
        self.active = not disabled() and not user and alone and self.threads > 1 and others_runnable() is not None
        self.sample_s, self.halflife_s, self.busy, self.calm_s = sample_s, halflife_s, busy, calm_s
        self.level, self.reduced, self.last, self.calm_since = 0.0, False, time.monotonic(), None
        self.switches = 0

    def tick(self) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if now - self.last < self.sample_s:
            return
        others = others_runnable() or 0.0
        weight = 0.5 ** ((now - self.last) / self.halflife_s)
        self.level, self.last = weight * self.level + (1 - weight) * others, now
        if not self.reduced and self.level >= self.busy:
            self.torch.set_num_threads(1)
            self.reduced, self.calm_since, self.switches = True, None, self.switches + 1
        elif self.reduced:
            if self.level >= 0.25:
                self.calm_since = None
            elif self.calm_since is None:
                self.calm_since = now
            elif now - self.calm_since >= self.calm_s:
                self.torch.set_num_threads(self.threads)
                self.reduced, self.switches = False, self.switches + 1

    def close(self) -> None:
        """Leave torch with the threads it had."""
        if self.reduced:
            self.torch.set_num_threads(self.threads)
            self.reduced = False
