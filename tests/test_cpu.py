"""align.cpu: OpenMP waits passively by default, and a user's own setting always wins."""

from __future__ import annotations

import os
import subprocess
import sys

from align.cpu import apply_cpu_defaults


def test_sets_passive_waiting_only_where_the_user_has_not_chosen():
    env: dict[str, str] = {}
    assert apply_cpu_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env["OMP_WAIT_POLICY"] == "PASSIVE"
    for own in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "100000"}, {"ALIGN_CPU_DEFAULTS": "0"}):
        env = dict(own)
        assert apply_cpu_defaults(env) == {} and env == own


def test_the_cli_sets_it_before_torch_loads_and_not_after():
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ALIGN_CPU_DEFAULTS")
    }
    code = (
        "import os, sys\nfrom align.app.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False PASSIVE", out.stderr
    late = (
        "import torch, os\nfrom align.cpu import apply_cpu_defaults\n"
        "print(apply_cpu_defaults(), os.environ.get('OMP_WAIT_POLICY'))"
    )
    out = subprocess.run([sys.executable, "-c", late], env=clean, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "{} None", out.stderr  # torch first: nothing set that could not apply
