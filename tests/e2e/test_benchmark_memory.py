"""benchmarks/memory.py, the one way the benchmarks measure memory: peak extra RSS of a call sees
an allocation it makes (and not one made before it), the process peak covers it, and every
benchmark that reports memory reads it from there (no private copies left)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


def memory():
    spec = importlib.util.spec_from_file_location("memory", REPO / "benchmarks" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_extra_sees_what_a_call_allocates():
    m = memory()
    meter = m.PeakExtra()
    if not meter.use_hwm:
        pytest.skip("no /proc/self/clear_refs: only the first call's ru_maxrss delta is measured")
    held = np.ones(32 * MIB // 8)  # allocated before: not the calls' extra memory
    with meter.measure():
        big = np.ones(96 * MIB // 8)  # touched, so resident
        del big
    with meter.measure():
        pass
    assert meter.calls == 2 and len(meter.peaks) == 2
    assert 90 * MIB <= meter.peaks[0] <= 120 * MIB, meter.peaks
    assert meter.peaks[1] < 16 * MIB, meter.peaks
    assert m.peak_rss_bytes() >= 96 * MIB + held.nbytes
    assert "VmHWM" in meter.method
    avail = m.mem_available()
    assert avail is None or avail > 0


def test_benchmarks_measure_memory_only_through_the_helper():
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        if path.name == "memory.py":
            continue
        text = path.read_text()
        assert not re.search(r"ru_maxrss\s*[/*)-]|getrusage\(|/proc/self/status|/proc/meminfo|clear_refs\"\)", text), (
            f"{path.name} measures memory its own way; use benchmarks/memory.py"
        )
