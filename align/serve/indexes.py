"""One loaded index folder of a ``Searcher``: checked against the model once, searched many times.

Filtered searches use a FAISS ``IDSelectorBatch`` over the matching ids, in one search call for the
whole batch. Why a selector rather than searching a larger k and dropping non-matching hits: on an
exact (Flat) index it returns exactly ``min(k, matching)`` hits however rare the matching items are,
at the cost of one pass over the index, whereas over-fetching needs k about ``k * size / matching``
(all of the index, [batch, size] results, for a filter matching a few items of a million).
Filtered searches run on the CPU index (a GPU copy takes no selector). Index types whose search takes
no parameters (``PQ``) fall back to over-fetching: search ``2k * size / matching`` deep (at least
``2k``), keep the matching hits, and search again four times deeper for the queries still short,
until each has ``k`` or the whole index was searched. Approximate indexes (IVF, HNSW) return what their search
visits, with a filter as without: possibly fewer than k hits.

Each loaded index keeps ``fingerprint``, its folder's ``folder_fingerprint`` taken *before* it was read,
so that a folder replaced while it was being loaded looks changed on the next check
(``align/serve/reload.py`` polls it to pick up a rebuilt index without a restart).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from align.index.build import IndexBuildError
from align.index.embedding_index import EmbeddingIndex
from align.serve.filters import MetadataFilter


@dataclass(frozen=True)
class IndexInfo:
    """What a health endpoint says about a loaded index."""

    name: str
    modality: str | None  # the modality of the items it holds
    size: int
    dim: int
    spec: str
    fields: tuple[str, ...]  # metadata fields a filter may name


Fingerprint = tuple[tuple[int, ...], tuple[tuple[str, int, int, int], ...]]


def folder_fingerprint(folder: str | Path) -> Fingerprint | None:
    """A cheap stamp of an index folder: its (device, inode) and, per visible entry, (name, inode, size,
    mtime_ns); None while it is no index folder (missing, or no ``manifest.json`` yet).

    Why these: ``atomic_folder(exists="replace")`` (how every save and update writes) renames a new
    folder in, a new inode; a file rewritten in place changes its own mtime / size. One ``scandir`` of
    a handful of files costs microseconds, so it can run every second, and it names no file but
    ``manifest.json`` (the folder's format may change under it). Hidden entries (a writer's
    ``.tmp-`` files) are left out: the rename that ends such a write gives the file a new inode."""
    folder = Path(folder)
    try:
        top = os.stat(folder)
        if not (folder / "manifest.json").is_file():
            return None
        with os.scandir(folder) as entries:
            files = sorted(
                (e.name, st.st_ino, st.st_size, st.st_mtime_ns)
                for e in entries
                if not e.name.startswith(".")
                for st in (e.stat(),)
            )
    except (FileNotFoundError, NotADirectoryError):  # mid-replace: the name is empty for a moment
        return None
    return (top.st_dev, top.st_ino), tuple(files)


class LoadedIndex:
    """An ``EmbeddingIndex`` folder, verified on load (``EmbeddingIndex.load``) and refused when it
    was built with another model than ``identity`` (``align.index.build.model_identity``), as
    ``align query`` refuses it."""

    def __init__(
        self,
        name: str,
        folder: str | Path,
        identity: str,
        embed_dim: int,
        loaded: EmbeddingIndex | None = None,
        fingerprint: Fingerprint | None = None,
    ) -> None:
        self.name, self.folder = name, Path(folder)
        self.fingerprint = fingerprint if fingerprint is not None else folder_fingerprint(self.folder)
        self.emb = loaded if loaded is not None else EmbeddingIndex.load(self.folder)
        built_with = self.emb.model or ""
        if not built_with:
            warnings.warn(
                f"index '{name}' ({folder}) does not record the model that built it; it cannot be checked "
                f"against the checkpoint ({identity})",
                UserWarning,
                stacklevel=3,
            )
        elif built_with.split(" ")[0] != identity.split(" ")[0]:
            raise IndexBuildError(
                f"index '{name}' ({folder}) was built with a different model ({built_with}); "
                f"this checkpoint is {identity}"
            )
        if self.emb.dim > embed_dim:
            raise IndexBuildError(f"index '{name}' ({folder}) has dim {self.emb.dim}, the model embeds to {embed_dim}")
        self.output_dim = self.emb.dim if self.emb.dim < embed_dim else None  # built with --dim (Matryoshka)
        self.filter = MetadataFilter(self.emb.ids, self.emb.get_metadata, name, self.emb.metadata_fields)
        self._selector_ok = True

    def __len__(self) -> int:
        return len(self.emb)

    @property
    def info(self) -> IndexInfo:
        return IndexInfo(
            self.name, self.emb.modality, len(self.emb), self.emb.dim, self.emb.spec, tuple(self.filter.fields)
        )

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'], ids [Q, k']) best first, ``k' = min(k, size or matching)``, id -1 padding
        where an approximate index found fewer; ``allowed``: the ids a filter admits, or None."""
        if allowed is None:
            return self.emb.search(queries, k)
        k = min(k, len(allowed))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.full((len(queries), 0), -1, np.int64)
        if self._selector_ok:
            try:
                return self._select(queries, k, allowed)
            except RuntimeError:  # this index type takes no search parameters (e.g. IndexPQ)
                self._selector_ok = False
        return self._overfetch(queries, k, allowed)

    def _select(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        x = np.array(queries, dtype=np.float32, order="C", copy=True)  # as EmbeddingIndex.search prepares it
        if self.emb.normalize:
            faiss.normalize_L2(x)
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        ivf = faiss.try_extract_index_ivf(self.emb.inner)
        params = (
            faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)  # IVF refuses plain SearchParameters
            if ivf is not None
            else faiss.SearchParameters(sel=selector)
        )
        return self.emb.index.search(x, k, params=params)  # the CPU index: GPU search takes no selector

    def _overfetch(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = len(self.emb)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        todo = np.arange(len(queries))
        depth = min(size, max(2 * k, int(np.ceil(2 * k * size / len(allowed)))))
        while len(todo):
            s, i = self.emb.search(queries[todo], depth)
            short = []
            for row, q in enumerate(todo):
                keep = np.flatnonzero(np.isin(i[row], allowed))[:k]
                scores[q, : len(keep)], ids[q, : len(keep)] = s[row, keep], i[row, keep]
                if len(keep) < k and depth < size:
                    short.append(q)
            todo, depth = np.asarray(short, dtype=np.int64), min(size, depth * 4)
        return scores, ids
