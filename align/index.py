"""FAISS index over L2-normalised embeddings: inner product = cosine similarity.

``EmbeddingIndex(dim, spec="Flat")`` wraps ``faiss.index_factory(dim, spec, METRIC_INNER_PRODUCT)``
("Flat" exact, "HNSW32", "IVF1024,Flat", "IVF1024,PQ64", ...) in an ``IndexIDMap2`` so items keep
stable int64 ids, and keeps per-item metadata (JSON-able dicts) beside the vectors. A saved index is
a folder: ``index.faiss``, ``metadata.jsonl`` (one ``{"id": ..., "metadata": {...}}`` per item, in id
order) and ``manifest.json`` (dim, count, spec, model identity, modality, and the size and sha256 of
every other file in the folder), written atomically and cross-checked on load: an edited, truncated or
swapped file is refused naming it, never served.
Saves to one folder hold ``<folder>.lock`` (``filelock``, in its parent) around check, write and rename:
without it two ``overwrite=False`` saves could both see no folder, the later silently replacing the
earlier. The lock file stays (deleting one that others wait on lets two holders in at once).

GPU: with faiss-gpu and ``faiss.get_num_gpus() > 0`` searches run on a GPU copy
(``index_cpu_to_all_gpus``); the CPU index stays the one that is added to and saved. Index types
FAISS cannot clone to GPU (e.g. HNSW) stay on CPU. This path is untested (CPU-only CI).
"""
from __future__ import annotations

from align.errors import AlignError

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# 2: the manifest's "files" holds the size and sha256 of every file beside it (1 had index.faiss's only).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_FILES = ("index.faiss", "metadata.jsonl", "manifest.json")
SAVE_LOCK_TIMEOUT_S = 3600.0  # a save waits this long for another save of the same folder to finish


class IndexFormatError(AlignError, ValueError):
    """A saved index folder is incomplete, inconsistent, or not what the caller expected."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_save_target(folder: str | Path, overwrite: bool, hint: str = "pass overwrite=True to replace it") -> None:
    """Raise ``FileExistsError`` if saving to ``folder`` is not allowed: a file is there, or a non-empty
    folder without ``overwrite``, or (even with ``overwrite``) a non-empty folder that is not an index,
    so a mistyped path never deletes someone's data. ``hint`` says how to allow it: the CLI passes its
    ``--overwrite`` flag, since it calls this before encoding anything."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; {hint}")
    if not (folder / "manifest.json").is_file():
        raise FileExistsError(f"{folder} is not empty and is not an index folder (no manifest.json): refusing to "
                              f"replace it even when asked to overwrite; remove it yourself or choose another folder")


class EmbeddingIndex:
    """Inner-product FAISS index with stable int64 ids and per-item metadata."""

    def __init__(self, dim: int, spec: str = "Flat", *, normalize: bool = True, auto_train: bool = True,
                 use_gpu: bool = True, model: str | None = None, modality: str | None = None,
                 add_batch_size: int = 65536, _index=None) -> None:
        import faiss

        self.dim, self.spec, self.normalize, self.auto_train = int(dim), spec, normalize, auto_train
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
            raise ValueError(f"{what} row {rows[0]} contains NaN or inf ({len(rows)} bad row(s) in total: "
                             f"{rows[:10].tolist()})")
        if self.normalize and len(x):
            import faiss

            faiss.normalize_L2(x)
        return x

    def _not_trained(self) -> RuntimeError:
        return RuntimeError(f"index {self.spec!r} is not trained: call train(x) with representative vectors "
                            f"(or add() with auto_train=True) first")

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
            raise ValueError(f"training index {self.spec!r} on {len(x)} vectors failed (IVF{{n}} needs at "
                             f"least n, PQ at least 256, ideally 30-256x that many): {e}") from e
        self._gpu_index = None

    # ------------------------------------------------------------------ adding
    def add(self, embeddings, ids=None, metadata=None) -> np.ndarray:
        """Add ``[N, dim]`` vectors (numpy or torch); ``ids`` default to len(self)..; ``metadata`` is an
        optional list of N dicts. Returns the ids. An untrained index is trained on this first call
        when ``auto_train`` is set."""
        x = self._as_array(embeddings)
        n = len(x)
        ids = np.arange(len(self), len(self) + n, dtype=np.int64) if ids is None else \
            np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
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
            self.index.add_with_ids(x[s:s + self.add_batch_size], ids[s:s + self.add_batch_size])
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
        return [[(float(s), int(i), self._meta.get(int(i), {})) for s, i in zip(srow, irow) if i != -1]
                for srow, irow in zip(scores, ids)]

    # ---------------------------------------------------------- save and load
    def save(self, folder, *, model: str | None = None, modality: str | None = None,
             overwrite: bool = False) -> Path:
        """Write the index folder atomically (temp folder + rename) under the folder's lock file, so that
        of two concurrent saves with ``overwrite=False`` exactly one succeeds, and with ``overwrite=True``
        the folder ends up holding one complete index. An existing non-empty folder is only replaced with
        ``overwrite=True``, and only if it is an index folder (see ``check_save_target``)."""
        import faiss
        from filelock import FileLock

        folder = Path(folder)
        model = model if model is not None else self.model
        modality = modality if modality is not None else self.modality
        check_save_target(folder, overwrite)  # fail fast, before waiting for the lock
        folder.parent.mkdir(parents=True, exist_ok=True)
        # in the resolved parent, so every spelling of the path shares one lock; a timeout raises
        # filelock's Timeout (a TimeoutError) naming <folder>.lock
        with FileLock(folder.parent.resolve() / f"{folder.name}.lock", timeout=SAVE_LOCK_TIMEOUT_S):
            check_save_target(folder, overwrite)  # the check that counts: nobody can save between it and rename
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
            try:
                faiss.write_index(self.index, str(tmp / "index.faiss"))
                ids = np.sort(self.ids)
                with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as f:
                    for i in ids.tolist():
                        f.write(json.dumps({"id": i, "metadata": self._meta.get(i, {})}, ensure_ascii=False) + "\n")
                files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
                manifest = {"format_version": FORMAT_VERSION, "dim": self.dim, "count": len(self), "spec": self.spec,
                            "metric": "inner_product", "normalize": self.normalize, "model": model,
                            "modality": modality, "nprobe": self.nprobe, "efSearch": self.efSearch,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "faiss_version": faiss.__version__, "index_sha256": files["index.faiss"]["sha256"],
                            "files": files}
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
                old = None
                if folder.exists():
                    old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.time_ns()}"
                    os.rename(folder, old)
                os.rename(tmp, folder)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.model, self.modality = model, modality
        return folder

    @classmethod
    def load(cls, folder, *, expect_dim: int | None = None, expect_model: str | None = None,
             expect_modality: str | None = None, use_gpu: bool = True) -> EmbeddingIndex:
        """Load a folder written by ``save``, checking that manifest, index.faiss and metadata.jsonl agree
        and that every file the manifest lists has its recorded size and sha256."""
        import faiss

        folder = Path(folder)

        def fail(msg: str) -> IndexFormatError:
            return IndexFormatError(f"index folder {folder}: {msg}")

        if not folder.is_dir():
            raise fail("does not exist" if not folder.exists() else "is not a folder")
        if not (folder / "manifest.json").is_file():
            raise fail("has no manifest.json, so it is not an index written by `align index build` / "
                       "EmbeddingIndex.save (or it is an incomplete copy of one)")
        missing = [f for f in _FILES if not (folder / f).is_file()]
        if missing:
            raise fail(f"missing {', '.join(missing)}")
        try:
            m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            dim, count, spec = int(m["dim"]), int(m["count"]), str(m["spec"])
        except (ValueError, KeyError, TypeError) as e:
            raise fail(f"manifest.json is unreadable or lacks dim/count/spec: {e!r}") from e
        if m.get("format_version") not in READABLE_VERSIONS:
            raise fail(f"format_version {m.get('format_version')!r}, this code reads {READABLE_VERSIONS}")
        if m["format_version"] == 1:  # checksummed index.faiss only
            import warnings

            files = {"index.faiss": {"sha256": m.get("index_sha256")}}
            warnings.warn(f"index folder {folder}: saved by an older align, its manifest has no checksum of "
                          f"metadata.jsonl; re-save it to add one (EmbeddingIndex.load(f).save(f, overwrite=True))",
                          stacklevel=2)
        else:
            files = m.get("files")
            if not isinstance(files, dict) or not {"index.faiss", "metadata.jsonl"} <= set(files) or any(
                    not isinstance(e, dict) or n != Path(n).name or n in ("..", "manifest.json")
                    for n, e in files.items()):  # plain names of files beside manifest.json
                raise fail("manifest.json's \"files\" must map index.faiss, metadata.jsonl, ... to {bytes, sha256}")

        def verify(name: str) -> None:
            path, entry = folder / name, files[name]
            if not path.is_file():
                raise fail(f"missing {name} (listed in manifest.json)")
            size = path.stat().st_size
            if "bytes" in entry and size != entry["bytes"]:
                raise fail(f"{name} is {size} bytes but manifest.json says {entry['bytes']} "
                           f"(file truncated, edited or replaced)")
            digest = _sha256(path)
            if digest != entry.get("sha256"):
                raise fail(f"{name} sha256 {digest[:16]}... does not match manifest.json's "
                           f"{str(entry.get('sha256'))[:16]}... (file edited, corrupted or replaced)")

        verify("index.faiss")  # before faiss parses it
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as e:
            raise fail(f"faiss cannot read index.faiss: {e}") from e
        if not isinstance(index, faiss.IndexIDMap2):
            raise fail(f"index.faiss holds {type(index).__name__}, expected IndexIDMap2")
        if index.d != dim:
            raise fail(f"manifest says dim {dim} but index.faiss has dim {index.d}")
        if index.ntotal != count:
            raise fail(f"manifest says count {count} but index.faiss holds {index.ntotal} vectors")
        out = cls(dim, spec, normalize=bool(m.get("normalize", True)), use_gpu=use_gpu, model=m.get("model"),
                  modality=m.get("modality"), _index=index)
        meta_ids, meta = [], {}
        with open(folder / "metadata.jsonl", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                    meta_ids.append(int(rec["id"]))
                except (ValueError, KeyError, TypeError) as e:
                    raise fail(f"metadata.jsonl line {line_no} is not a {{\"id\": ..., ...}} record: {e!r}") from e
                if rec.get("metadata"):
                    meta[meta_ids[-1]] = rec["metadata"]
        if len(meta_ids) != count:
            raise fail(f"metadata.jsonl has {len(meta_ids)} records but manifest/index count is {count}")
        if not np.array_equal(np.asarray(meta_ids, dtype=np.int64), np.sort(out.ids)):
            raise fail("ids in metadata.jsonl do not match the ids stored in index.faiss")
        # after the record checks above, which say more precisely what is wrong; this catches the rest
        # (an edited label, path or caption keeps the record count and ids)
        for name in files:
            if name != "index.faiss":
                verify(name)
        out._meta = meta
        if (expect_dim is not None and expect_dim != dim) or (expect_model is not None and expect_model != out.model):
            raise fail(f"index built with a different embedding dim or model: it has dim {dim}, model "
                       f"{out.model!r}; expected dim {expect_dim}, model {expect_model!r}")
        if expect_modality is not None and expect_modality != out.modality:
            raise fail(f"index holds {out.modality!r} embeddings, expected {expect_modality!r}")
        return out
