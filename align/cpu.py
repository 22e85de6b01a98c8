"""CPU thread defaults that degrade to a fair share when other processes want the cores.

torch's OpenMP threads (GNU libgomp) spin-wait between parallel regions: on a quiet machine that
saves a wake-up, but when other processes share the cores a spinning thread burns the time slice a
working thread needed, and a run can fall to a small fraction of its fair share (issue 21 item 10:
Cora node<->text 420 samples/s quiet, 10 samples/s beside two busy processes). The figures behind
the choice are in benchmarks/README.md (``benchmarks/cpu_contention.py``).

``apply_cpu_defaults()`` sets ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning) when
the user has set neither it nor ``GOMP_SPINCOUNT``; it must run before torch is imported, since
libgomp reads the environment once, when it loads, so the CLI calls it first thing. It never
overrides a user's own ``OMP_*`` / ``GOMP_*`` setting, and ``ALIGN_CPU_DEFAULTS=0`` turns it off.
A program that imports torch itself before align gets torch's defaults; set the variable in its
environment instead.
"""

from __future__ import annotations

import os
import sys

DISABLE_ENV = "ALIGN_CPU_DEFAULTS"
WAIT_POLICY = "PASSIVE"


def apply_cpu_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set align's OpenMP defaults in ``environ`` (default ``os.environ``) where the user has not.
    Returns what was set (empty when nothing was: the user's choice, disabled, or torch loaded)."""
    env = os.environ if environ is None else environ
    if env.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    if environ is None and "torch" in sys.modules:
        return {}  # libgomp has read its settings already: changing them now would only mislead
    if any(k in env for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}
    env["OMP_WAIT_POLICY"] = WAIT_POLICY
    return {"OMP_WAIT_POLICY": WAIT_POLICY}
