"""``align index build`` and ``align query``: encode a dataset into a FAISS index folder, then
search it with a query of any modality the checkpoint has.

An index remembers which model made it (``model`` in its manifest and its content.json: the checkpoint's
weights hash and path), so querying it with another model's embeddings fails instead of returning
nonsense. The checkpoint is verified against its own manifest before that comparison: a damaged one is
named as damaged (``CheckpointError``), not mistaken for another model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from align.config.dataset import DatasetSpec
from align.config.schema import _format_validation_error
from align.data.tables import load_table
from align.errors import AlignError, ConfigError
from align.index.choose import as_record, choose
from align.index.chunked import index_from_spill, spill_chunks
from align.index.embedding_index import EmbeddingIndex
from align.index.encode import CHUNK_ROWS, EncodedChunks, row_chunks
from align.index.score import measure, prepare
from align.io.hashing import sha256_file
from align.model.align_model import raw_encoder
from align.model.checkpoint import load_model, read_manifest, resolve_checkpoint, verify_files


class IndexBuildError(AlignError, ValueError):
    """The index cannot be built or queried as asked; the message says why."""


def model_identity(ckpt: Path) -> str:
    """``sha256:<16 hex of model.safetensors> <resolved folder>``: what an index records as the model that
    built it and a query compares with. The checkpoint is verified against its own manifest first
    (``CheckpointError`` naming the damaged file), so damage is reported as damage, not as "a different
    model"; the digest is then the manifest's, just verified (hashed only here with --trust-unverified)."""
    verify_files(ckpt, ["model.safetensors", "config.yaml"])
    entry = ((read_manifest(ckpt) or {}).get("files") or {}).get("model.safetensors")
    digest = entry["sha256"] if entry else sha256_file(ckpt / "model.safetensors")
    return f"sha256:{digest[:16]} {ckpt.resolve()}"


def parse_data_spec(text: str):
    """``--data`` is a YAML file holding a dataset spec, or the spec inline as YAML."""
    from pydantic import ValidationError

    from align.config.safe_yaml import load_yaml_file, load_yaml_text

    try:
        is_file = "\n" not in text and Path(text).is_file()
    except OSError:  # an inline spec longer than a file name can be
        is_file = False
    data = load_yaml_file(text) if is_file else load_yaml_text(text, "--data")
    if not isinstance(data, dict):
        raise ConfigError(f"--data: expected a dataset spec mapping (source, split, columns, ...), got {text!r}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "data.")) from None


def build_index(
    checkpoint: str | Path,
    spec,
    modality: str,
    index_spec: str | None = "Flat",
    batch_size: int = 256,
    progress: bool = True,
    dim: int | None = None,
    max_memory: int | None = None,
    max_query_ms: float | None = None,
    score_queries: int = 200,
    storage: str | None = None,
    scratch: str | Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
    chunks=None,
):
    """Encode ``spec``'s ``modality`` column with the checkpoint's model into an ``EmbeddingIndex``
    whose metadata holds each item's row, path, label and caption where the data has them.

    The rows are encoded a chunk at a time and spilled to ``scratch`` (a folder that must outlive the
    index until it is saved; default: a temporary one kept alive by the index), so the build holds one
    chunk plus the index's in-RAM part (``align/index/chunked.py``); ``storage="ondisk"`` puts IVF lists
    in a file there, merged from shards. ``chunks``: ``Chunk``s encoded elsewhere (the processes of a
    distributed build) instead of encoding here.
    ``index_spec=None``: chosen for ``max_memory`` / ``max_query_ms`` (``align.index.choose``), with the
    storage it chose unless ``storage`` is given. IVF and PQ parts are trained on a sample of all items.
    Unless ``score_queries=0``, the built index is scored (recall@10 against exact search, computed
    block by block, on up to that many cross-modal and same-modality queries, query time, memory) into
    ``index.build_report``, which the folder's manifest records."""
    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    if modality not in model.adapters:
        raise IndexBuildError(f"checkpoint {ckpt} has no modality '{modality}' (it has {model.modalities})")
    if modality not in spec.columns:
        raise IndexBuildError(f"--data names no column for modality '{modality}' (columns: {spec.columns})")
    if dim is not None and not 0 < dim <= cfg.model.embed_dim:
        raise IndexBuildError(f"--dim {dim}: the model embeds to {cfg.model.embed_dim} dims")
    model.output_dim = dim  # a Matryoshka prefix; the index's dim records it for queries
    width = dim or cfg.model.embed_dim
    table = None if spec.streaming else load_table(spec, "data")
    holder = None
    if scratch is None:
        holder = tempfile.TemporaryDirectory(prefix="align-index-build-")
        scratch = holder.name
    encoded = chunks
    if encoded is None:
        encoded = EncodedChunks(model, row_chunks(spec, table, chunk_rows), spec, modality, batch_size, progress)
    spill, meta = spill_chunks(encoded, width, scratch)
    report = None
    if index_spec is None:  # chosen for the budget, then scored on held-out cross-modal queries
        chosen, why = choose(spill.count, width, max_memory, max_query_ms)
        index_spec = chosen.spec
        storage = storage or chosen.storage
        report = as_record(chosen, why, {"max_memory": max_memory, "max_query_ms": max_query_ms})
    start = time.perf_counter()
    try:
        index = index_from_spill(
            spill, meta, index_spec, storage=storage or "ram", model=model_identity(ckpt), modality=modality
        )
    except ValueError as e:
        raise IndexBuildError(f"--on-disk: {e}" if storage == "ondisk" else str(e)) from None
    if spill.count:
        prepare(index)
    build_s = time.perf_counter() - start
    if spill.count and (report is not None or score_queries):
        n = min(score_queries, spill.count)
        queries = {f"{modality} (indexed items)": spill.rows(np.arange(n))}
        other = next((m for m in spec.columns if m != modality and m in model.adapters), None)
        if other is not None:
            head = table
            if head is None:  # a stream: its head, read again
                from align.data.streaming import head_table

                head = head_table(spec, "--data", rows=n)
            raws = [head[i][spec.columns[other]] for i in range(min(n, len(head)))]
            queries = {f"{other} -> {modality} (cross-modal)": raw_encoder(model, other)(raws).numpy(), **queries}
        report = {**(report or {"chosen": {"spec": index_spec}}), "build_s": build_s, "storage": storage or "ram"}
        report.update(measure(index, spill.blocks, spill.ids, queries))
    index.skipped = getattr(encoded, "skipped", 0)  # rows left out because they failed to load (on_error=skip)
    index.build_report = report
    index._scratch = holder  # the spilled files live as long as the index
    return index


def query_index(index_dir: str | Path, modality: str, raw: Any, k: int = 5, checkpoint: str | None = None):
    """Top-k ``(score, id, metadata)`` for one raw query (a string, a file path, ...)."""
    # the index first: a folder that is no index (no manifest.json, an edited file) is reported as that,
    # not as a missing checkpoint at the model path an absent manifest could not give
    index = EmbeddingIndex.load(index_dir)
    built_with = index.model or ""
    if not checkpoint and not built_with:
        raise IndexBuildError(f"index {index_dir} does not record the model that built it; pass --checkpoint")
    ckpt = resolve_checkpoint(checkpoint or built_with.split(" ", 1)[-1])
    identity = model_identity(ckpt)  # verifies the checkpoint first: damage is named as damage
    if built_with and built_with.split(" ")[0] != identity.split(" ")[0]:
        raise IndexBuildError(
            f"index {index_dir} was built with a different model ({built_with}); this checkpoint is {identity}"
        )
    model, cfg = load_model(ckpt)
    if index.dim > cfg.model.embed_dim:
        raise IndexBuildError(f"index {index_dir} has dim {index.dim}, the model embeds to {cfg.model.embed_dim}")
    model.output_dim = index.dim if index.dim < cfg.model.embed_dim else None  # built with --dim
    if modality not in model.adapters:
        raise IndexBuildError(f"checkpoint {ckpt} has no modality '{modality}' (it has {model.modalities})")
    return index.search_with_metadata(raw_encoder(model, modality)([raw]), k)[0]
