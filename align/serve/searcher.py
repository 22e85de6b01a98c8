"""``Searcher``: the in-process search API an HTTP service is a thin layer over.

A service answers many small requests with one model, so everything slow happens once, in the
constructor: the checkpoint is verified and loaded (``align.model.checkpoint.load_model``), each
index folder is loaded, verified and checked against the checkpoint's identity as ``align query``
does, and each modality's eval preprocessor is built on first use and kept. A request is then one
encoder forward for the whole batch and one FAISS search for the whole batch::

    searcher = Searcher("runs/demo", {"digits": "runs/digits-index"})
    hits = searcher.search("text", ["a handwritten seven.", "the digit three."], k=5, filters={"label": "seven"})
    hits[0][0].id, hits[0][0].score, hits[0][0].metadata

Threads: a ``Searcher`` is meant to be owned by one worker thread (the one a service hands
requests to); torch modules are not documented as safe to call concurrently, and a search sets the
model's ``output_dim`` for its index's width for the duration of the forward. Every public call
holds one lock, so calls from several threads are serialised rather than interleaved. Forwards run
under ``torch.inference_mode``.

Index folders rebuilt while serving: ``swap_index`` replaces one loaded index by another under the
lock, so a search in progress finishes on the old one and the next uses the new one (``generation``
counts swaps); ``align.serve.reload.IndexReloader`` loads and checks the new folder off the request
path and calls it.

Bad requests raise ``SearchError`` (a ``ValueError``) saying what is wrong; a damaged checkpoint or
index folder fails the constructor with the error that names the file (``CheckpointError``,
``IndexFormatError``), an index built with another model with ``IndexBuildError``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from align.errors import SampleError
from align.index.build import IndexBuildError, model_identity
from align.index.embedding_index import EmbeddingIndex
from align.model.align_model import raw_encoder
from align.model.checkpoint import load_model, resolve_checkpoint
from align.serve.errors import SearchError
from align.serve.indexes import IndexInfo, LoadedIndex
from align.serve.inputs import check_batch, readable_items
from align.serve.zeroshot import ClassifierCache, check_class_names

MAX_K = 1000  # hits one query may ask for: more is a listing, not a search
MAX_BATCH = 256  # items per call: one forward must fit in memory
MAX_TEXT_CHARS = 4096  # characters per string item (captions, SMILES); tokenizers truncate far below


@dataclass(frozen=True)
class Hit:
    """One result: the item's id in its index, cosine ``score``, ``rank`` (1 = best), its metadata
    (row, path, label, caption: what ``align index build`` recorded) and the index it came from."""

    id: int
    score: float
    rank: int
    metadata: dict[str, Any]
    index: str


def recorded_checkpoint(indexes: Mapping[str, str | Path]) -> tuple[str, dict[str, EmbeddingIndex]]:
    """The checkpoint folder the one given index recorded as the model that built it, and that
    index, loaded (so it is read once)."""
    if len(indexes) != 1:
        raise SearchError(f"give the checkpoint: with {len(indexes)} indexes there is no one recorded model")
    ((name, folder),) = indexes.items()
    emb = EmbeddingIndex.load(folder)
    if not emb.model:
        raise IndexBuildError(f"index {folder} does not record the model that built it; pass --checkpoint")
    return emb.model.split(" ", 1)[-1], {name: emb}


def load_heads(checkpoint: Path, model: Any, extra: Mapping[str, str | Path] | None) -> dict[str, Any]:
    """The few-shot heads saved beside the checkpoint (``<checkpoint>/adapted/``) and any given by
    name; one that does not load or does not fit the model stops the start, naming its file."""
    from align.model.adapted import AdaptedError, adapted_files, load_adapted

    files = {**adapted_files(checkpoint), **{str(k): Path(v) for k, v in (extra or {}).items()}}
    heads = {}
    for name, path in files.items():
        try:
            heads[name] = load_adapted(path, model)
        except AdaptedError as err:
            raise SearchError(f"adapter {name!r}: {err}") from err
    return heads


class Searcher:
    """A checkpoint and its index folders, loaded once; ``search``, ``encode`` and ``classify``."""

    def __init__(
        self,
        checkpoint: str | Path | None,
        indexes: Mapping[str, str | Path] | None = None,
        *,
        device: str | None = None,
        max_k: int = MAX_K,
        max_batch: int = MAX_BATCH,
        max_text_chars: int = MAX_TEXT_CHARS,
        classifier_cache: int = 32,
        adapters: Mapping[str, str | Path] | None = None,
    ) -> None:
        preloaded: dict[str, EmbeddingIndex] = {}
        if checkpoint is None:  # the model the index records: the index is read first, so a folder that
            # is no index is reported as that, not as a missing checkpoint its manifest could not name
            checkpoint, preloaded = recorded_checkpoint(indexes or {})
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.identity = model_identity(self.checkpoint)  # verified against its manifest first
        model, cfg = load_model(self.checkpoint)
        self.model = model.to(device) if device else model
        self.cfg = cfg
        self.max_k, self.max_batch, self.max_text_chars = int(max_k), int(max_batch), int(max_text_chars)
        self._lock = threading.RLock()
        self._encoders: dict[str, Any] = {}
        self._indexes: dict[str, LoadedIndex] = {}
        for name, folder in (indexes or {}).items():
            if not isinstance(name, str) or not name:
                raise SearchError(f"index names must be non-empty strings, got {name!r}")
            self._indexes[name] = LoadedIndex(
                name, folder, self.identity, cfg.model.embed_dim, loaded=preloaded.get(name)
            )
        self._classifiers = ClassifierCache(self.model, classifier_cache)
        self.adapted = load_heads(self.checkpoint, self.model, adapters)
        self.generation = 0  # index swaps so far: what an HTTP layer compares to know its snapshot is stale

    # ------------------------------------------------------------------ what is loaded
    @property
    def modalities(self) -> list[str]:
        """The modalities the checkpoint encodes."""
        return list(self.model.modalities)

    @property
    def indexes(self) -> dict[str, IndexInfo]:
        """Loaded indexes by name: items' modality, size, dim, spec, metadata fields."""
        return {name: idx.info for name, idx in self._indexes.items()}

    @property
    def index_items(self) -> dict[str, EmbeddingIndex]:
        """Loaded indexes by name, for per-item lookups (metadata, recorded files); not to be searched
        around the lock."""
        return {name: idx.emb for name, idx in self._indexes.items()}

    def loaded_index(self, name: str | None = None) -> LoadedIndex:
        """The ``LoadedIndex`` now serving as ``name``; ``SearchError`` for an unknown name."""
        return self._index(name)

    def swap_index(self, name: str, new: LoadedIndex, expected: LoadedIndex) -> bool:
        """Serve ``new`` as ``name`` from the next call on, if ``expected`` is still the one serving (a
        compare-and-swap: of two reloaders over one ``Searcher`` only the first swaps); False otherwise.
        Under the lock, so no call sees half of a swap; the old index is freed once its last search ends."""
        with self._lock:
            if self._indexes.get(name) is not expected:
                return False
            self._indexes[name] = new
            self.generation += 1
            return True

    # ------------------------------------------------------------------ requests
    def search(
        self,
        modality: str,
        raw_items: Sequence[Any],
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        index: str | None = None,
    ) -> list[list[Hit]]:
        """Per query item, its top-``k`` hits in ``index`` (the one loaded index by default), best
        first; ``k`` is capped at the index size (or the number of items ``filters`` admits).
        ``filters``: metadata field -> value or list of allowed values, all fields must match."""
        with self._lock:
            loaded = self._index(index)
            k = self._check_k(k)
            self._check_modality(modality)
            no_filter = filters is None or (isinstance(filters, Mapping) and not filters)
            # before encoding: a bad filter costs no forward
            allowed = None if no_filter else loaded.filter.allowed(filters)
            queries = self._embed(modality, raw_items, loaded.output_dim)
            scores, ids = loaded.search(queries, min(k, len(loaded)), allowed)
            return [
                [
                    Hit(int(i), float(s), rank, dict(loaded.emb.get_metadata(int(i))), loaded.name)
                    for rank, (s, i) in enumerate(((s, i) for s, i in zip(srow, irow) if i != -1), start=1)
                ]
                for srow, irow in zip(scores, ids)
            ]

    def encode(self, modality: str, raw_items: Sequence[Any]) -> np.ndarray:
        """Unit-norm float32 embeddings ``[len(raw_items), embed_dim]`` (``align.encode``'s numbers)."""
        with self._lock:
            self._check_modality(modality)
            return self._embed(modality, raw_items, None)

    def classify(
        self,
        item: Any,
        class_names: Sequence[str] | None,
        templates: Sequence[str] | Mapping[str, Sequence[str]] | str | None,
        *,
        modality: str,
        prompt_modality: str = "text",
        adapter: str | None = None,
    ) -> list[tuple[str, float]]:
        """Zero-shot: ``(class, probability)`` for one item, most probable first. Class embeddings
        come from ``align.eval.zeroshot.build_classifier`` (prompt ensembles; ``templates`` a list of
        ``{}`` / ``{c}`` templates, a dict class -> prompts, or a shipped template set's name) and
        are cached per (class names, templates). Probabilities are a softmax over the classes of the
        model's logits for the pair (``exp(logit_scale) * cosine``): which of these classes, summing
        to 1, also for a SigLIP model (whose bias cancels in a softmax).

        ``adapter``: the name of a few-shot head ``align adapt`` saved beside the checkpoint (or
        given to the constructor): it classifies instead of the templates, over its own classes
        (``class_names`` may be left out; shared learned context also takes other names)."""
        import torch

        if adapter is not None:
            return self._classify_adapted(item, class_names, modality, adapter)
        if class_names is None:
            raise SearchError("class_names is required (or name an adapter whose classes to use)")
        templates = ["{}"] if templates is None else templates

        from align.eval.zeroshot import classify as cosine_scores

        with self._lock:
            self._check_modality(modality)
            self._check_modality(prompt_modality)
            names, classifier = self._classifiers.get(class_names, templates, prompt_modality, self.max_text_chars)
            query = torch.from_numpy(self._embed(modality, [item], None))
            with torch.inference_mode():
                logits = self.model.pair_scale(modality, prompt_modality).float().cpu() * cosine_scores(
                    query, classifier
                )
                probs = logits.softmax(dim=-1)[0].tolist()
            return sorted(zip(names, probs), key=lambda pair: -pair[1])

    def _classify_adapted(self, item: Any, class_names, modality: str, name: str) -> list[tuple[str, float]]:
        import torch

        from align.model.adapted import AdaptedError, PromptHead

        with self._lock:
            if name not in self.adapted:
                raise SearchError(f"no adapter named {name!r} is loaded; loaded: {sorted(self.adapted)}")
            head = self.adapted[name]
            if modality != head.query:
                raise SearchError(f"adapter {name!r} classifies {head.query!r} items, not {modality!r}")
            names = head.classnames if class_names is None else check_class_names(class_names, self.max_text_chars)
            shared = isinstance(head, PromptHead) and not head.class_specific
            if not shared and list(names) != head.classnames:
                raise SearchError(f"adapter {name!r} ({head.method}) classifies into its own classes {head.classnames}")
            query = torch.from_numpy(self._embed(modality, [item], None))
            try:
                with torch.inference_mode():
                    logits = head.logits(query, names=names) if shared else head.logits(query)
            except AdaptedError as err:
                raise SearchError(str(err)) from err
            probs = logits.float().softmax(dim=-1)[0].tolist()
            return sorted(zip(names, probs), key=lambda pair: -pair[1])

    # ------------------------------------------------------------------ checks and helpers
    def _index(self, name: str | None) -> LoadedIndex:
        if name is None:
            if len(self._indexes) == 1:
                return next(iter(self._indexes.values()))
            if not self._indexes:
                raise SearchError("no index is loaded: pass index folders to Searcher(checkpoint, {name: folder})")
            raise SearchError(f"{len(self._indexes)} indexes are loaded; pass index= one of {sorted(self._indexes)}")
        if name not in self._indexes:
            raise SearchError(f"no index named {name!r} is loaded; loaded: {sorted(self._indexes)}")
        return self._indexes[name]

    def _check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise SearchError(f"k must be an integer, got {type(k).__name__} {k!r}")
        if k < 1:
            raise SearchError(f"k must be at least 1, got {k}")
        if k > self.max_k:
            raise SearchError(f"k={k} is more than max_k={self.max_k}, the most hits one query may ask for")
        return int(k)

    def _check_modality(self, modality: Any) -> None:
        if modality not in self.model.adapters:
            raise SearchError(f"the checkpoint has no modality {modality!r}; it has {self.modalities}")

    def _encoder(self, modality: str):
        """The modality's raw-items encoder (``raw_encoder``: eval preprocessing + forward), built once."""
        if modality not in self._encoders:
            self._encoders[modality] = raw_encoder(self.model, modality)
        return self._encoders[modality]

    def _embed(self, modality: str, raw_items: Any, output_dim: int | None) -> np.ndarray:
        import torch

        items = check_batch(modality, raw_items, self.max_batch, self.max_text_chars)
        run = self._encoder(modality)
        previous, self.model.output_dim = self.model.output_dim, output_dim
        try:
            with readable_items(modality, items, self.max_text_chars) as ready, torch.inference_mode():
                return run(ready).numpy().astype(np.float32, copy=False)
        except SampleError as err:  # names the item's position: "image item 2 (...): cannot decode"
            raise SearchError(str(err)) from err
        finally:
            self.model.output_dim = previous
