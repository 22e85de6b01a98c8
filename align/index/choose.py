"""Choosing a FAISS index for a memory (and query-time) budget.

``choose(n, dim, max_memory, max_query_ms)`` walks the candidates from most to least exact and takes
the first whose estimated RAM (and query time) fits. ``max_memory`` bounds RAM only: an on-disk
candidate's lists file (``disk_bytes``) is not counted against it. The walk:

1. in RAM, exact or nearly: ``Flat`` (4·d bytes a vector), ``IVF{L},Flat`` (the same codes, searched
   in ``nprobe`` of ``L`` lists), ``IVF{L},SQ8`` (8-bit scalar codes, d bytes);
2. in RAM, coarse PQ codes rescored with SQ8 codes (``IVF{L},PQ{m},Refine(SQ8)``, faiss's
   ``IndexRefine``: the top ``k·REFINE_K_FACTOR`` by PQ distance re-ranked by SQ8 distance);
3. lists on disk: ``IVF{L},Flat`` and ``IVF{L},SQ8`` with their inverted lists in ``lists.ivfdata``
   (faiss ``OnDiskInvertedLists``, memory-mapped): RAM is the coarse quantizer and a 24-byte entry a
   list, the codes are read from disk as lists are probed;
4. in RAM, lossy: ``IVF{L},PQ{m}`` (m bytes, m = d/2, d/4, ...);
5. ``HNSW32`` (4·d + ~260 bytes: larger than Flat), first in the walk when a query-time budget is set.

Why on-disk before in-RAM PQ (clustered synthetic vectors, 50,000 x 64, IVF1024, nprobe 128, 200
held-out queries, one core): on-disk IVF1024,Flat recall@10 1.000 with 287 KB of RAM (13.2 MB on disk),
on-disk IVF1024,SQ8 0.986 with 287 KB (3.6 MB on disk), against in-RAM IVF1024,PQ8 0.385 with 1.14 MB,
PQ16 0.642 / 1.54 MB, PQ32 0.879 / 2.34 MB: less RAM and far better recall. What it costs is query time:
0.72-0.76 ms a query with the lists in the page cache (0.07 ms in RAM; the difference is faiss's 32
prefetch threads started per query: 0.07 ms with ``prefetch_nthread = 0``), 2.8 ms (Flat) and 1.0 ms
(SQ8) with the lists file evicted from the page cache before each query (posix_fadvise DONTNEED) on
this machine's virtual disk. The estimate adds a disk penalty of ``DISK_LIST_MS`` a probed list plus
the probed codes read at ``DISK_BYTES_PER_MS`` (assumed: an SSD's 0.1 ms random read with ~20 in
flight, 500 MB/s; fitted here: 1.9 µs a list, 670 MB/s), which gives 4.2 and 1.8 ms for the two above,
so ``--max-query-ms`` rules them out when it should.

Why the rescoring candidates sit after in-RAM SQ8 (same vectors): IVF1024,PQ8,Refine(SQ8) reaches
recall 0.932 with ``k_factor`` 16 (0.385 without rescoring, 0.724 at 4) and IVF1024,PQ16,Refine(SQ8)
0.967 (0.642 unrescored), both in more RAM than IVF1024,SQ8 alone (95 and 103 bytes a vector against
77: the SQ8 codes are kept in RAM beside the PQ codes, and an ``IndexIDMap2`` over ``IndexRefine``
adds 8 bytes of ids to the IVF's own) and no faster (0.096 / 0.109 ms against 0.067; at 20,000 x 512
PQ64,Refine(SQ8) 0.139 ms against SQ8's 0.108), so their query estimate is SQ8's scan plus the
rescoring. SQ8 dominates them here; they stay in the walk, estimated honestly, for when a faster PQ
scan or codes mapped from disk change that. Binary codes (sentence-transformers' ``quantize``):
faiss's ``LSH*`` factory strings require METRIC_L2 (``EmbeddingIndex`` builds inner product), and
1-bit PQ (``IVF1024,PQ64x1,Refine(SQ8)``, recall 0.929) is 4x slower than PQ8, so neither is offered.

IVF variants (and so lists on disk and rescoring) are used from 10,000 items (below that an exhaustive
scan is as fast as probing lists, and Flat, SQ8, PQ{m} and HNSW32 are the candidates)
with ``L`` a power of two near 4·√n and at least 39 items a list (what faiss's k-means wants). An
``IndexIDMap2`` (non-IVF indexes) costs 16 bytes a vector (its serialised id array is 8, its reverse
map at least as much), an IVF list 8 (the id beside each code). The estimates are faiss's own layout
(checked against ``faiss.serialize_index`` and the lists file's size in tests/index/test_choose.py);
what the built index takes is measured and recorded beside them (``align.index.score``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

IVF_FROM = 10_000  # items from which an inverted file beats scanning everything
ID_BYTES = 16  # IndexIDMap2: the id array and its reverse map
IVF_ID_BYTES = 8  # an IVF list keeps each item's id beside its code
LIST_ENTRY_BYTES = 24  # OnDiskInvertedLists keeps (size, capacity, offset) a list in RAM (measured 24.2)
FLAT_GFLOPS = 2.0  # one query's exhaustive scan on one core, conservatively (a dot product per item)
DISK_LIST_MS = 0.005  # a probed on-disk list: an SSD random read (~0.1 ms), ~20 in flight (prefetch threads)
DISK_BYTES_PER_MS = 500e3  # 500 MB/s reading the probed lists (measured here: ~670 MB/s cold)
REFINE_K_FACTOR = 16  # IndexRefine rescores k * this many PQ hits (recall 0.932 vs 0.724 at 4, 0.385 at 1)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


class BudgetError(ValueError):
    """No candidate index fits the budget; the message names the smallest and what it needs."""


@dataclass(frozen=True)
class Candidate:
    spec: str  # a faiss factory string, whatever the storage
    bytes: int  # estimated RAM: for lists on disk, the coarse quantizer and the lists' directory
    query_ms: float  # estimated one-query time (on disk: with a cold-cache disk penalty)
    why: str
    storage: str = "ram"  # "ram" | "ondisk" (IVF lists in lists.ivfdata, memory-mapped)
    disk_bytes: int = 0  # estimated size of the lists file for storage "ondisk", else 0

    @property
    def label(self) -> str:
        return self.spec + (" (lists on disk)" if self.storage == "ondisk" else "")


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


def nprobe_for(lists: int) -> int:
    """Lists an IVF search visits: 1/8 of them, at least 8 (recall over speed; a search parameter)."""
    return min(lists, max(8, lists // 8))


def candidates(n: int, dim: int) -> list[Candidate]:
    """Every index the chooser considers for ``n`` vectors of ``dim``, in the walk's order (module
    docstring), HNSW32 last."""
    scan_ms = n * dim / (FLAT_GFLOPS * 1e9) * 1e3
    hnsw = Candidate("HNSW32", n * (4 * dim + 32 * 2 * 4 + ID_BYTES + 8), 0.05 + 0.002 * math.log2(max(n, 2)), "graph")
    flat = Candidate("Flat", n * (4 * dim + ID_BYTES), scan_ms, "exact: every vector stored, every one scanned")
    sq_trained = 2 * dim * 4  # SQ8's per-dimension min and range
    pq_book = 256 * dim * 4  # PQ's codebooks: 256 centroids of d/m dims for each of m sub-vectors
    if n < IVF_FROM:
        pq = [
            Candidate(f"PQ{m}", n * (m + ID_BYTES) + pq_book, scan_ms * m / dim + 0.01, f"{m}-byte PQ codes")
            for m in _pq_sizes(dim)
        ]
        return [flat, Candidate("SQ8", n * (dim + ID_BYTES) + sq_trained, scan_ms, "8-bit scalar codes"), *pq, hnsw]
    L = _lists(n)
    nprobe = nprobe_for(L)
    probe = nprobe / L
    coarse = L * dim * 4
    where = f"IVF{L} (nprobe {nprobe}) over "
    rerank_ms = 10 * REFINE_K_FACTOR * dim / (FLAT_GFLOPS * 1e9) * 1e3  # SQ8 distances to k * k_factor hits
    ram = [
        flat,
        Candidate(f"IVF{L},Flat", n * (4 * dim + IVF_ID_BYTES) + coarse, scan_ms * probe, f"{where}exact codes"),
        Candidate(
            f"IVF{L},SQ8", n * (dim + IVF_ID_BYTES) + coarse + sq_trained, scan_ms * probe, f"{where}8-bit scalar codes"
        ),
    ]
    rescored = [
        Candidate(
            f"IVF{L},PQ{m},Refine(SQ8)",
            n * (m + IVF_ID_BYTES + dim + ID_BYTES) + coarse + pq_book + sq_trained,
            scan_ms * probe + rerank_ms + 0.01,
            f"{where}{m}-byte PQ codes, the best {REFINE_K_FACTOR}·k rescored with 8-bit scalar codes",
        )
        for m in _pq_sizes(dim)[1:3]  # d/4 and d/8 bytes: d/2 would cost more than SQ8 alone
    ]
    on_disk = []
    for codes, code_size, extra in (("exact codes", 4 * dim, 0), ("8-bit scalar codes", dim, sq_trained)):
        disk = n * (code_size + IVF_ID_BYTES)
        penalty = nprobe * DISK_LIST_MS + disk * probe / DISK_BYTES_PER_MS
        spec = f"IVF{L},{'Flat' if code_size == 4 * dim else 'SQ8'}"
        why = f"{where}{codes}, lists on disk ({_fmt(disk)} in lists.ivfdata, memory-mapped)"
        on_disk.append(
            Candidate(spec, coarse + L * LIST_ENTRY_BYTES + extra, scan_ms * probe + penalty, why, "ondisk", disk)
        )
    pq = [
        Candidate(
            f"IVF{L},PQ{m}",
            n * (m + IVF_ID_BYTES) + coarse + pq_book,
            scan_ms * probe * m / dim + 0.01,
            f"{where}{m}-byte PQ codes",
        )
        for m in _pq_sizes(dim)
    ]
    return ram + rescored + on_disk + pq + [hnsw]


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
        raise BudgetError(
            f"no index of {n:,} vectors of dim {dim} fits --max-memory {_fmt(max_memory)}"
            + (f" and --max-query-ms {max_query_ms}" if max_query_ms is not None else "")
            + f": {_smallest(pool)}"
        )
    chosen = fits[0]
    passed = [c.label for c in ordered[: ordered.index(chosen)]]
    why = chosen.why + (f"; larger or slower than the budget: {', '.join(passed)}" if passed else "")
    return chosen, why


def _smallest(pool: list[Candidate]) -> str:
    """What the budget would have to allow: the least RAM (lists on disk, when there are IVF candidates;
    its disk too), the least RAM entirely in RAM, and the fastest."""
    least = min(c.bytes for c in pool)  # on-disk Flat and SQ8 differ by 512 bytes of RAM: the less disk of them
    smallest = min((c for c in pool if c.bytes <= least * 1.01), key=lambda c: (c.disk_bytes, c.bytes))
    in_ram = min((c for c in pool if c.storage == "ram"), key=lambda c: c.bytes)
    fastest = min(pool, key=lambda c: c.query_ms)
    text = f"the smallest is {smallest.label} (~{_fmt(smallest.bytes)}"
    if smallest.storage == "ondisk":
        text += f" of RAM + ~{_fmt(smallest.disk_bytes)} on disk, ~{smallest.query_ms:.2f} ms a query), "
        text += f"entirely in RAM {in_ram.spec} (~{_fmt(in_ram.bytes)}, ~{in_ram.query_ms:.2f} ms), "
    else:
        text += f", ~{smallest.query_ms:.2f} ms a query), "
    return text + f"the fastest {fastest.label} (~{_fmt(fastest.bytes)}, ~{fastest.query_ms:.2f} ms)"


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
