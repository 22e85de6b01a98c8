"""Choosing a FAISS index for a memory (and query-time) budget, and scoring the choice.

``choose(n, dim, max_memory, max_query_ms)`` walks the candidates from most to least exact and takes
the first whose estimated size fits: ``Flat`` (4·d bytes a vector), ``IVF{L},Flat`` (the same codes,
searched in ``nprobe`` of ``L`` lists), scalar quantisation ``SQ8`` (d bytes), product quantisation
``PQ{m}`` (m bytes, m = d/2, d/4, ...), and ``HNSW32`` (4·d + ~260 bytes: larger than Flat, chosen only
when a query-time budget rules exhaustive search out). IVF variants are used from 10,000 items (below
that an exhaustive scan is as fast as probing lists) with ``L`` a power of two near 4·√n and at least
39 items a list (what faiss's k-means wants). Each vector also costs 16 bytes of id map. The estimate
is faiss's own layout; what the built index actually takes is measured and recorded beside it.

The built index is scored by ``align.index.score``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

IVF_FROM = 10_000  # items from which an inverted file beats scanning everything
ID_BYTES = 16  # IndexIDMap2: the id array and its reverse map
FLAT_GFLOPS = 2.0  # one query's exhaustive scan on one core, conservatively (a dot product per item)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


class BudgetError(ValueError):
    """No candidate index fits the budget; the message names the smallest and what it needs."""


@dataclass(frozen=True)
class Candidate:
    spec: str
    bytes: int  # estimated in-memory size
    query_ms: float  # estimated one-query time
    why: str


def parse_size(text: str) -> int:
    """``'2GB'``, ``'512MiB'``, ``'1.5g'``, ``'800000'`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 512MiB, 2GB, 800000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _lists(n: int) -> int:
    target = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    return max(1, min(target, n // 39))


def _pq_sizes(dim: int) -> list[int]:
    sizes, m = [], dim // 2
    while m >= 4:
        if dim % m == 0:
            sizes.append(m)
        m //= 2
    return sizes


def candidates(n: int, dim: int) -> list[Candidate]:
    """Every index the chooser considers for ``n`` vectors of ``dim``, most exact first."""
    scan_ms = n * dim / (FLAT_GFLOPS * 1e9) * 1e3
    ivf = n >= IVF_FROM
    L = _lists(n)
    nprobe = nprobe_for(L)
    probe = nprobe / L if ivf else 1.0
    prefix = f"IVF{L}," if ivf else ""
    coarse = L * dim * 4 if ivf else 0
    where = f"IVF{L} (nprobe {nprobe}) over " if ivf else ""
    out = [Candidate("Flat", n * (4 * dim + ID_BYTES), scan_ms, "exact: every vector stored, every one scanned")]
    if ivf:
        out.append(
            Candidate(f"{prefix}Flat", n * (4 * dim + ID_BYTES) + coarse, scan_ms * probe, f"{where}exact codes")
        )
    out.append(Candidate(f"{prefix}SQ8", n * (dim + ID_BYTES) + coarse, scan_ms * probe, f"{where}8-bit scalar codes"))
    for m in _pq_sizes(dim):
        size = n * (m + ID_BYTES) + coarse + 256 * dim * 4
        out.append(Candidate(f"{prefix}PQ{m}", size, scan_ms * probe * m / dim + 0.01, f"{where}{m}-byte PQ codes"))
    hnsw = Candidate("HNSW32", n * (4 * dim + 32 * 2 * 4 + ID_BYTES + 8), 0.05 + 0.002 * math.log2(max(n, 2)), "graph")
    return out + [hnsw]


def nprobe_for(lists: int) -> int:
    """Lists an IVF search visits: 1/8 of them, at least 8 (recall over speed; a search parameter)."""
    return min(lists, max(8, lists // 8))


def choose(n: int, dim: int, max_memory: int | None = None, max_query_ms: float | None = None) -> tuple[Candidate, str]:
    """The first candidate that fits both budgets, and why it was taken over the ones before it."""
    pool = candidates(n, dim)
    ordered = [c for c in pool if c.spec != "HNSW32"]
    if max_query_ms is not None:
        ordered = [pool[-1]] + ordered  # fast first when queries have a budget
    fits = [
        c
        for c in ordered
        if (max_memory is None or c.bytes <= max_memory) and (max_query_ms is None or c.query_ms <= max_query_ms)
    ]
    if not fits:
        smallest = min(pool, key=lambda c: c.bytes)
        fastest = min(pool, key=lambda c: c.query_ms)
        raise BudgetError(
            f"no index of {n:,} vectors of dim {dim} fits --max-memory {_fmt(max_memory)}"
            + (f" and --max-query-ms {max_query_ms}" if max_query_ms is not None else "")
            + f": the smallest is {smallest.spec} (~{_fmt(smallest.bytes)}, ~{smallest.query_ms:.2f} ms a query), "
            f"the fastest {fastest.spec} (~{_fmt(fastest.bytes)}, ~{fastest.query_ms:.2f} ms)"
        )
    chosen = fits[0]
    passed = [c.spec for c in ordered[: ordered.index(chosen)]]
    why = chosen.why + (f"; larger or slower than the budget: {', '.join(passed)}" if passed else "")
    return chosen, why


def _fmt(n: float | None) -> str:
    if n is None:
        return "none"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def as_record(chosen: Candidate, why: str, budget: dict[str, Any]) -> dict[str, Any]:
    return {"chosen": asdict(chosen), "why": why, "budget": budget}
