"""Memory measurements the benchmarks share (one way to read each number, Linux ``/proc`` first).

* ``peak_rss_bytes``: the process's peak RSS so far (``ru_maxrss``, KiB on Linux, bytes on macOS);
* ``PeakExtra``: peak RSS *during* each of several calls minus the RSS just before it (Linux:
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere the ``ru_maxrss``
  delta of the first call only, since ``ru_maxrss`` never goes down);
* ``mem_available``: ``MemAvailable`` of ``/proc/meminfo`` (what the machine can still give).

Benchmarks import it as ``from memory import ...`` (a script's own folder is first on sys.path)."""

from __future__ import annotations

import resource
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def proc_status_kb(field: str) -> int | None:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in KiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where that is not possible (not Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak RSS since it started, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def mem_available() -> int | None:
    """Bytes the machine can still give (``MemAvailable``); None where ``/proc/meminfo`` is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakExtra:
    """Peak extra memory of repeated calls: ``with meter.measure(): call()`` for each, then
    ``meter.peaks`` (bytes, one per measured call: all of them with ``VmHWM``, the first only
    without) and ``meter.method`` (how they were measured, for the report)."""

    def __init__(self) -> None:
        self.use_hwm = reset_hwm()
        self.peaks: list[int] = []
        self.calls = 0

    @property
    def method(self) -> str:
        return "VmHWM - VmRSS (reset via /proc/self/clear_refs)" if self.use_hwm else "ru_maxrss delta"

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.use_hwm:
            reset_hwm()
            rss0 = proc_status_kb("VmRSS")
        maxrss0 = peak_rss_bytes()
        yield
        if self.use_hwm:
            self.peaks.append((proc_status_kb("VmHWM") - rss0) * 1024)
        elif self.calls == 0:  # ru_maxrss only ever grows: only the first call's delta means anything
            self.peaks.append(peak_rss_bytes() - maxrss0)
        self.calls += 1
