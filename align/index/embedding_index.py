"""FAISS index over L2-normalised embeddings: inner product = cosine similarity.

``EmbeddingIndex(dim, spec="Flat")`` wraps ``faiss.index_factory(dim, spec, METRIC_INNER_PRODUCT)``
("Flat" exact, "HNSW32", "IVF1024,Flat", "IVF1024,PQ64", ...) so items keep stable int64 ids: flat-code
and graph indexes in an ``IndexIDMap2``; IVF indexes hold the ids in their lists themselves (an
``IndexIDMap2`` over an IVF index would store them twice, 16 more bytes an item, and its ``remove_ids``
renumbers the map but not the lists, which corrupts every later search), and their lists may live on disk
(``lists.ivfdata``, see ``align/index/writer.py``). Per-item metadata (JSON-able dicts) is kept beside the
vectors (``align/index/metadata.py``: a memory-mapped Arrow file once saved). A saved index is a folder
(``index.faiss``, ``metadata.arrow``, ``content.json``, ``manifest.json``; ``align/index/files.py``),
written atomically and cross-checked on load: an edited, truncated or swapped file is refused naming it,
never served, even when manifest.json was recomputed over it (what is and is not caught:
``align/index/content.py``). Saves to one folder hold ``<folder>.lock`` (``filelock``, in its parent)
around check, write and rename: without it two ``overwrite=False`` saves could both see no folder, the
later silently replacing the earlier. The lock file stays (deleting one that others wait on lets two
holders in at once).

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
from align.index.metadata import MetadataView


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
        self._meta = MetadataView()
        self.lists_path: Path | None = None  # an IVF index's lists file on disk (lists.ivfdata), if any
        self._max_id: int | None = None  # the largest id so far, once known (cheap clash checks on add)
        if _index is not None:
            self.index = _index
        else:
            if spec.replace(" ", "").upper().startswith("IDMAP"):
                raise ValueError(f"index spec {spec!r}: leave out 'IDMap', ids are always kept")
            try:
                inner = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                raise ValueError(f"faiss.index_factory cannot build {spec!r} for dim {self.dim}: {e}") from e
            self._owner = inner  # the factory's wrapper owns the C++ index: a downcast view must not outlive it
            down = faiss.downcast_index(inner)
            self.index = down if isinstance(down, faiss.IndexIVF) else faiss.IndexIDMap2(inner)
        self.inner = faiss.downcast_index(self.index.index) if self._id_mapped else self.index

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"EmbeddingIndex(dim={self.dim}, spec={self.spec!r}, count={len(self)}, trained={self.is_trained})"

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def _id_mapped(self) -> bool:
        import faiss

        return isinstance(self.index, faiss.IndexIDMap2)

    @property
    def ids(self) -> np.ndarray:
        """All ids: in insertion order (``IndexIDMap2``), or list by list (IVF)."""
        import faiss

        if self._id_mapped:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self.index.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(self.index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def get_metadata(self, id_: int) -> dict:
        return self._meta.get(int(id_), {}) or {}

    @property
    def metadata_fields(self) -> list[str]:
        """Every key the items' metadata use (recorded in the saved file: no scan of the rows)."""
        return self._meta.fields

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
        base = getattr(self.inner, "base_index", None)  # IndexRefine: the codes it rescores
        for part in (self.inner, base, faiss.try_extract_index_ivf(self.inner)):
            part = None if part is None else faiss.downcast_index(part)  # a plain IndexIVF view has no flag
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
        self._refuse_on_disk_change("add to")
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
        if len(self) and self._max_id is None:
            self._max_id = int(self.ids.max())
        if n and len(self) and ids.min() <= self._max_id:  # new ids above every old one cannot clash
            clash = np.intersect1d(ids, self.ids)
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
        if n:
            self._max_id = max(int(ids.max()), self._max_id if self._max_id is not None else int(ids.max()))
        self._gpu_index = None
        return ids

    def _refuse_on_disk_change(self, what: str) -> None:
        """Lists on disk are changed in memory and written back (``move_lists_to_memory``): faiss
        changes ``lists.ivfdata`` in place, corrupting ids when a list grows, and a saved folder may
        share the file (a hard link: ``align/index/writer.py``)."""
        if self.lists_path is not None:
            raise ValueError(
                f"cannot {what} an index whose lists are on disk ({self.lists_path}): call "
                f"move_lists_to_memory() first, or change a saved folder with align index add / remove"
            )

    def move_lists_to_disk(self, path) -> None:
        """Move an IVF index's inverted lists (its codes and ids: nearly all of its memory) into the file
        ``path`` (faiss's ``OnDiskInvertedLists``, mapped, so searching pages in the lists it probes);
        what stays in memory is the coarse quantizer. Saving copies the file into the folder as
        ``lists.ivfdata``."""
        import faiss

        ivf = faiss.try_extract_index_ivf(self.inner)
        if ivf is None or self._id_mapped:
            raise ValueError(f"lists on disk need an IVF index (e.g. IVF1024,PQ16), not {self.spec!r}")
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
        parts = faiss.InvertedListsPtrVector()
        parts.push_back(ivf.invlists)
        lists.merge_from_multiple(parts.data(), parts.size(), False)
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # owned by the index now
        self.lists_path, self._gpu_index = Path(path), None

    def move_lists_to_memory(self) -> None:
        """The inverse of ``move_lists_to_disk``, for a change: faiss's on-disk lists corrupt their ids
        when a list outgrows its slot (measured: 409 of 3,010 ids garbage after adding 10 items to a
        compact merged file), so items are added to lists in memory and written back compact. The lists
        file is emptied in the process: call it on a copy (``align.index.lifecycle.update_folder`` does)."""
        import faiss

        ivf = faiss.extract_index_ivf(self.index)
        memory = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        memory.merge_from(ivf.invlists, 0)
        ivf.replace_invlists(memory, True)
        memory.this.disown()
        self.lists_path, self._gpu_index = None, None

    def remove(self, ids) -> int:
        """Remove the items with these ids (all must be in the index); returns how many. HNSW indexes
        cannot remove (faiss's graph has no deletion): rebuild them instead."""
        import faiss

        self._refuse_on_disk_change("remove from")
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        missing = np.setdiff1d(ids, self.ids)
        if len(missing):
            raise ValueError(f"ids not in the index: {missing[:10].tolist()}")
        if self._hnsw() is not None and faiss.try_extract_index_ivf(self.inner) is None:
            raise ValueError(
                f"index {self.spec!r} is an HNSW graph, which faiss cannot remove items from; rebuild it "
                f"without them (align index build), or use a Flat / IVF index"
            )
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        self._meta.remove(ids.tolist())
        self._max_id, self._gpu_index = None, None
        return removed

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
            [(float(s), int(i), self._meta.get(int(i), {}) or {}) for s, i in zip(srow, irow) if i != -1]
            for srow, irow in zip(scores, ids)
        ]

    # ---------------------------------------------------------- save and load (align/index/files.py)
    def save(self, folder, *, model: str | None = None, modality: str | None = None, overwrite: bool = False) -> Path:
        """Write the index folder atomically under its lock file (``align.index.files.save_folder``);
        an existing non-empty folder is only replaced with ``overwrite=True``, and only if it is an
        index folder (``check_save_target``)."""
        return save_folder(self, folder, model=model, modality=modality, overwrite=overwrite)

    @classmethod
    def open_files(cls, folder, like: EmbeddingIndex) -> EmbeddingIndex:
        """``like`` (a loaded on-disk index) re-read from the copies of its ``index.faiss`` and
        ``lists.ivfdata`` in ``folder``: the same items and metadata, its lists now that copy, so a
        change writes there (``align.index.lifecycle.update_folder``)."""
        import faiss

        index = faiss.read_index(str(Path(folder) / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        out = cls(
            like.dim,
            like.spec,
            normalize=like.normalize,
            use_gpu=like.use_gpu,
            model=like.model,
            modality=like.modality,
            _index=index,
        )
        out._meta, out.build_report = like._meta, like.build_report
        out.lists_path = Path(folder) / "lists.ivfdata"
        return out

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
