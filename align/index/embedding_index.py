"""FAISS index over L2-normalised embeddings: inner product = cosine similarity.

``EmbeddingIndex(dim, spec="Flat")`` wraps ``faiss.index_factory(dim, spec, METRIC_INNER_PRODUCT)``
("Flat" exact, "HNSW32", "IVF1024,Flat", "IVF1024,PQ64", ...) in an ``IndexIDMap2`` so items keep
stable int64 ids, and keeps per-item metadata (JSON-able dicts) beside the vectors. A saved index is
a folder: ``index.faiss``, ``metadata.jsonl`` (one ``{"id": ..., "metadata": {...}}`` per item, in id
order), ``content.json`` (count, dim, model identity, modality and the sha256 of the two files before it,
recorded at save; ``align/index/content.py``) and ``manifest.json`` (dim, count, spec, model identity,
modality, and the size and sha256 of every other file in the folder), written atomically and
cross-checked on load: an edited, truncated or swapped file is refused naming it, never served, even
when manifest.json was recomputed over it (what is and is not caught: ``align/index/content.py``).
Saves to one folder hold ``<folder>.lock`` (``filelock``, in its parent) around check, write and rename:
without it two ``overwrite=False`` saves could both see no folder, the later silently replacing the
earlier. The lock file stays (deleting one that others wait on lets two holders in at once).

GPU: with faiss-gpu and ``faiss.get_num_gpus() > 0`` searches run on a GPU copy
(``index_cpu_to_all_gpus``); the CPU index stays the one that is added to and saved. Index types
FAISS cannot clone to GPU (e.g. HNSW) stay on CPU. This path is untested (CPU-only CI).
Saving and loading live in ``align/index/files.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from align.index.files import load_folder, save_folder


class EmbeddingIndex:
    """Inner-product FAISS index with stable int64 ids and per-item metadata."""

    def __init__(
        self,
        dim: int,
        spec: str = "Flat",
        *,
        normalize: bool = True,
        auto_train: bool = True,
        use_gpu: bool = True,
        model: str | None = None,
        modality: str | None = None,
        add_batch_size: int = 65536,
        _index=None,
    ) -> None:
        import faiss

        self.dim, self.spec, self.normalize, self.auto_train = int(dim), spec, normalize, auto_train
        self.build_report: dict | None = None  # how align index build chose and scored it
        self.model, self.modality, self.add_batch_size = model, modality, add_batch_size
        self.use_gpu = use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        self._gpu_index = None
        self._meta: dict[int, dict] = {}
        if _index is not None:
            self.index = _index
        else:
            if spec.replace(" ", "").upper().startswith("IDMAP"):
                raise ValueError(f"index spec {spec!r}: leave out 'IDMap', ids are always kept (IndexIDMap2)")
            try:
                inner = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                raise ValueError(f"faiss.index_factory cannot build {spec!r} for dim {self.dim}: {e}") from e
            self.index = faiss.IndexIDMap2(inner)
        self.inner = faiss.downcast_index(self.index.index)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"EmbeddingIndex(dim={self.dim}, spec={self.spec!r}, count={len(self)}, trained={self.is_trained})"

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ids(self) -> np.ndarray:
        """All ids, in insertion order."""
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def get_metadata(self, id_: int) -> dict:
        return self._meta.get(int(id_), {})

    def _as_array(self, x, what: str = "embeddings") -> np.ndarray:
        if hasattr(x, "detach"):  # torch tensor
            x = x.detach().float().cpu().numpy()
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape [N, {self.dim}], got {tuple(x.shape)}")
        x = np.array(x, dtype=np.float32, order="C", copy=True)  # private copy: normalised in place
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"{what} row {rows[0]} contains NaN or inf ({len(rows)} bad row(s) in total: {rows[:10].tolist()})"
            )
        if self.normalize and len(x):
            import faiss

            faiss.normalize_L2(x)
        return x

    def _not_trained(self) -> RuntimeError:
        return RuntimeError(
            f"index {self.spec!r} is not trained: call train(x) with representative vectors "
            f"(or add() with auto_train=True) first"
        )

    # ---------------------------------------------------------------- training
    def train(self, x) -> None:
        """Train IVF / PQ parts on ``x``. No-op for index types that need no training (Flat, HNSW)."""
        if self.is_trained:
            if self._needs_training():
                raise RuntimeError(f"index {self.spec!r} is already trained; build a new EmbeddingIndex to retrain")
            return
        self._train(self._as_array(x, "training vectors"))

    def _needs_training(self) -> bool:
        import faiss

        return not faiss.index_factory(self.dim, self.spec, faiss.METRIC_INNER_PRODUCT).is_trained

    def _train(self, x: np.ndarray) -> None:
        import faiss

        # Polysemous training (faiss's default for PQ codes) only helps polysemous search, which
        # this class never turns on (polysemous_ht stays 0), and takes minutes for PQ64: skip it.
        for part in (self.inner, faiss.try_extract_index_ivf(self.inner)):
            if part is not None and hasattr(part, "do_polysemous_training"):
                part.do_polysemous_training = False
        try:
            self.index.train(x)
        except RuntimeError as e:
            raise ValueError(
                f"training index {self.spec!r} on {len(x)} vectors failed (IVF{{n}} needs at "
                f"least n, PQ at least 256, ideally 30-256x that many): {e}"
            ) from e
        self._gpu_index = None

    # ------------------------------------------------------------------ adding
    def add(self, embeddings, ids=None, metadata=None) -> np.ndarray:
        """Add ``[N, dim]`` vectors (numpy or torch); ``ids`` default to len(self)..; ``metadata`` is an
        optional list of N dicts. Returns the ids. An untrained index is trained on this first call
        when ``auto_train`` is set."""
        x = self._as_array(embeddings)
        n = len(x)
        ids = (
            np.arange(len(self), len(self) + n, dtype=np.int64)
            if ids is None
            else np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
        )
        if len(ids) != n:
            raise ValueError(f"got {n} embeddings but {len(ids)} ids")
        if len(np.unique(ids)) != n:
            raise ValueError("ids passed to add() contain duplicates")
        clash = np.intersect1d(ids, self.ids) if len(self) else ()
        if len(clash):
            raise ValueError(f"ids already in the index: {clash[:10].tolist()}")
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != n:
                raise ValueError(f"got {n} embeddings but {len(metadata)} metadata entries")
            for i, m in enumerate(metadata):
                if not isinstance(m, dict):
                    raise ValueError(f"metadata[{i}] must be a dict, got {type(m).__name__}")
                try:
                    json.dumps(m)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"metadata[{i}] is not JSON-serialisable: {e}") from e
        if not self.is_trained:
            if not self.auto_train:
                raise self._not_trained()
            self._train(x)
        for s in range(0, n, self.add_batch_size):
            self.index.add_with_ids(x[s : s + self.add_batch_size], ids[s : s + self.add_batch_size])
        if metadata is not None:
            self._meta.update((int(i), m) for i, m in zip(ids, metadata) if m)
        self._gpu_index = None
        return ids

    # --------------------------------------------------------------- searching
    def set_search_params(self, nprobe: int | None = None, efSearch: int | None = None) -> None:
        """IVF ``nprobe`` (lists visited per query) and HNSW ``efSearch`` (candidate list size)."""
        import faiss

        if nprobe is not None:
            ivf = faiss.try_extract_index_ivf(self.inner)
            if ivf is None:
                raise ValueError(f"nprobe applies to IVF indexes, not {self.spec!r}")
            ivf.nprobe = int(nprobe)
        if efSearch is not None:
            hnsw = self._hnsw()
            if hnsw is None:
                raise ValueError(f"efSearch applies to HNSW indexes, not {self.spec!r}")
            hnsw.efSearch = int(efSearch)
        self._gpu_index = None

    def _hnsw(self):
        import faiss

        if hasattr(self.inner, "hnsw"):
            return self.inner.hnsw
        ivf = faiss.try_extract_index_ivf(self.inner)
        q = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
        return q.hnsw if q is not None and hasattr(q, "hnsw") else None

    @property
    def nprobe(self) -> int | None:
        import faiss

        ivf = faiss.try_extract_index_ivf(self.inner)
        return None if ivf is None else int(ivf.nprobe)

    @property
    def efSearch(self) -> int | None:
        hnsw = self._hnsw()
        return None if hnsw is None else int(hnsw.efSearch)

    def _search_index(self):
        if not self.use_gpu:
            return self.index
        if self._gpu_index is None:
            import faiss

            try:  # untested here: needs faiss-gpu and a GPU
                self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
            except (RuntimeError, AttributeError):  # type FAISS cannot put on GPU (e.g. HNSW): stay on CPU
                self.use_gpu = False
                return self.index
        return self._gpu_index

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], ids [Q, k]) best first; ``k`` is capped at the index size. Approximate
        indexes may return fewer hits, padded with id -1 (score -inf or -3.4e38)."""
        if not self.is_trained:
            raise self._not_trained()
        q = self._as_array(queries, "queries")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(int(k), len(self))
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
        # GPU indexes take k <= 2048 (nprobe too); larger searches use the CPU index
        return (self._search_index() if k <= 2048 else self.index).search(q, k)

    def search_with_metadata(self, queries, k: int) -> list[list[tuple[float, int, dict]]]:
        """Per query, a list of (score, id, metadata) best first (missing hits left out)."""
        scores, ids = self.search(queries, k)
        return [
            [(float(s), int(i), self._meta.get(int(i), {})) for s, i in zip(srow, irow) if i != -1]
            for srow, irow in zip(scores, ids)
        ]

    # ---------------------------------------------------------- save and load (align/index/files.py)
    def save(self, folder, *, model: str | None = None, modality: str | None = None, overwrite: bool = False) -> Path:
        """Write the index folder atomically under its lock file (``align.index.files.save_folder``);
        an existing non-empty folder is only replaced with ``overwrite=True``, and only if it is an
        index folder (``check_save_target``)."""
        return save_folder(self, folder, model=model, modality=modality, overwrite=overwrite)

    @classmethod
    def load(
        cls,
        folder,
        *,
        expect_dim: int | None = None,
        expect_model: str | None = None,
        expect_modality: str | None = None,
        use_gpu: bool = True,
    ) -> EmbeddingIndex:
        """Load a folder written by ``save``, every file checked against the manifest
        (``align.index.files.load_folder``)."""
        return load_folder(
            cls,
            folder,
            expect_dim=expect_dim,
            expect_model=expect_model,
            expect_modality=expect_modality,
            use_gpu=use_gpu,
        )
