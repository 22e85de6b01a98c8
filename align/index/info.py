"""``align index info DIR``: what an index folder holds, after verifying it.

The folder is loaded as a query would load it (``EmbeddingIndex.load``: every file against the
manifest and ``content.json``), so what is shown is what a search would use, never a description of
a damaged folder. Shown: the faiss spec and the index type faiss built, count, dimension, the
modality and the model identity it was built with (and whether that checkpoint folder is still
there), its search parameters (IVF lists / nprobe, HNSW efSearch, IndexRefine's rescoring
k_factor), the metadata fields, each file's size, bytes per vector on disk, where the lists live
(in RAM, or in ``lists.ivfdata``, memory-mapped) and the RAM the loaded index holds.

That RAM is ``faiss.serialize_index`` of the loaded index. For lists in RAM it is the whole index
(50,000 x 64 IVF1024,Flat: 13,470,475 bytes). For lists on disk faiss serialises the coarse quantizer
and the lists' directory (a size, capacity and offset a list), not the codes, which is what it keeps
in RAM (the same index on disk: 286,932 bytes, the lists file 13,200,000); the file's pages are mapped
and cached by the OS as lists are probed (evictable page cache, not the process's own memory), so the
figure is shown as the in-RAM part with the mapped file beside it. The chooser's estimates (RAM, lists
file, query time) are shown when the build recorded them; records from before lists on disk existed
have no ``storage`` / ``disk_bytes`` and show as in RAM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.index.embedding_index import EmbeddingIndex
from align.index.writer import LISTS


def index_info(folder: str | Path) -> dict[str, Any]:
    """A verified index folder's description, as a JSON-able dict."""
    import faiss

    folder = Path(folder)
    idx = EmbeddingIndex.load(folder, use_gpu=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {name: entry.get("bytes") for name, entry in sorted((manifest.get("files") or {}).items())}
    ivf = faiss.try_extract_index_ivf(idx.inner)
    fields = idx.metadata_fields  # recorded in metadata.arrow's schema: no scan of every row (10M items: minutes)
    model = idx.model or None
    ckpt = Path(model.split(" ", 1)[-1]) if model else None
    count = len(idx)
    on_disk = idx.lists_path is not None or manifest.get("storage") == "ondisk"
    refine = faiss.downcast_index(idx.inner)
    return {
        "folder": str(folder.resolve()),
        "format": manifest.get("format_version"),
        "created": manifest.get("created"),
        "spec": idx.spec,
        "faiss_type": type(idx.inner).__name__,
        "count": count,
        "dim": idx.dim,
        "normalize": idx.normalize,
        "trained": idx.is_trained,
        "modality": idx.modality,
        "model": model,
        "checkpoint_present": bool(ckpt and (ckpt / "model.safetensors").is_file()),
        "ivf_lists": None if ivf is None else int(ivf.nlist),
        "nprobe": idx.nprobe,
        "efSearch": idx.efSearch,
        "k_factor": float(refine.k_factor) if isinstance(refine, faiss.IndexRefine) else None,
        "metadata_fields": fields,
        "files": files,
        "index_bytes_per_vector": ((files.get("index.faiss") or 0) + (files.get(LISTS) or 0)) / count
        if count
        else None,
        "storage": "ondisk" if on_disk else "ram",
        "lists_file": {"name": LISTS, "bytes": files.get(LISTS)} if on_disk else None,
        "memory_bytes": int(faiss.serialize_index(idx.index).size),  # on disk: the quantizer and directory
        "build": idx.build_report,
    }


def _size(n: float | int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _budget(budget: dict[str, Any]) -> str:
    parts = []
    if budget.get("max_memory") is not None:
        parts.append(f"max memory {_size(budget['max_memory'])}")
    if budget.get("max_query_ms") is not None:
        parts.append(f"max {budget['max_query_ms']} ms a query")
    return ", ".join(parts) or "no budget"


def _storage(info: dict[str, Any]) -> str:
    lists = info.get("lists_file")
    if not lists:
        return "in RAM"
    return f"lists on disk: {lists['name']} {_size(lists['bytes'])}, memory-mapped"


def _estimated(chosen: dict[str, Any]) -> str:
    """The chooser's estimate; records from before lists on disk have no storage / disk_bytes."""
    ram = _size(chosen.get("bytes"))
    if chosen.get("storage", "ram") == "ondisk":
        ram += f" RAM + {_size(chosen.get('disk_bytes'))} lists on disk"
    query = chosen.get("query_ms")
    return ram + ("" if query is None else f", {query:.2f} ms a query")


def format_info(info: dict[str, Any]) -> str:
    """The description as aligned ``key: value`` lines."""
    search = []
    if info["ivf_lists"] is not None:
        search.append(f"IVF {info['ivf_lists']} lists, nprobe {info['nprobe']}")
    if info["efSearch"] is not None:
        search.append(f"HNSW efSearch {info['efSearch']}")
    if info.get("k_factor") is not None:
        search.append(f"rescoring the best {info['k_factor']:g}·k (IndexRefine k_factor)")
    present = "" if not info["model"] else ("" if info["checkpoint_present"] else " (that folder is gone)")
    per_vector = info["index_bytes_per_vector"]
    lists = info.get("lists_file")
    rows = [
        ("folder", info["folder"]),
        ("verified", f"every file against manifest.json and content.json (format {info['format']})"),
        ("created", info["created"] or "-"),
        ("index", f"{info['spec']} (faiss {info['faiss_type']}), trained: {info['trained']}"),
        ("items", f"{info['count']:,} of dim {info['dim']}{', unit-normalised' if info['normalize'] else ''}"),
        ("modality", info["modality"] or "-"),
        ("model", (info["model"] or "not recorded") + present),
        ("search", "; ".join(search) or "exhaustive"),
        ("metadata", ", ".join(info["metadata_fields"]) or "-"),
        ("storage", _storage(info)),
        ("in memory", _size(info["memory_bytes"]) + (" (coarse quantizer and list directory)" if lists else "")),
        ("on disk", ", ".join(f"{name} {_size(n)}" for name, n in info["files"].items())),
        (
            "per vector",
            "-" if per_vector is None else f"{per_vector:.1f} bytes in index.faiss{' and ' + LISTS if lists else ''}",
        ),
    ]
    build = info.get("build") or {}
    if build.get("why"):
        rows.append(("chosen", f"{build['chosen']['spec']} for {_budget(build.get('budget') or {})}: {build['why']}"))
        rows.append(("estimated", _estimated(build["chosen"])))
    for name, value in (build.get("recall@10") or {}).items():
        rows.append(("recall@10", f"{value:.3f} vs exact search, queries: {name}"))
    if "query_ms_p50" in build:
        rows.append(("measured", f"{build['query_ms_p50']:.2f} ms a query (p50), built in {build['build_s']:.2f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
