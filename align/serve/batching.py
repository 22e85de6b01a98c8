"""Dynamic batching: one worker thread owns the ``Searcher``; requests queue for it.

Why: an encoder forward and a FAISS search cost nearly the same for 1 query as for 16 on a CPU
(the per-call overhead dominates small batches), so concurrent requests answered by one call are
much cheaper than the same requests one by one. And why one thread: torch modules are not
documented as safe to call concurrently, and a search sets the model's ``output_dim`` for its
index; the event loop never runs torch, so a slow forward never stalls accepting connections.

A request is a ``Job`` with a ``concurrent.futures.Future``. The worker takes the first job, then
gathers more for up to ``batch_wait_ms`` or until ``max_batch`` items, and groups compatible jobs
(same kind, modality, index and filters; different ``k`` are searched with the largest and each cut
to its own). Each group is ONE ``Searcher`` call; when that call raises, its jobs are retried one by
one so that only the request that caused it fails (its error message then names positions in its
own batch). The queue is bounded: ``submit`` raises ``QueueFull`` (the service answers 503 with
``Retry-After``) rather than letting latency grow without limit. ``stop`` answers every job already
queued, then ends the thread (a SIGTERM drain).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from align.serve.metrics import Metrics
    from align.serve.searcher import Searcher

SearcherSource = Union["Searcher", Callable[[], "Searcher"]]

_STOP = object()


class QueueFull(RuntimeError):
    """The worker's queue holds ``max_queue`` jobs (or the batcher is stopping): try again later."""


@dataclass
class Job:
    """One request for the worker: ``kind`` is ``search``, ``encode`` or ``classify``."""

    kind: str
    modality: str
    items: Sequence[Any]
    index: str | None = None
    k: int = 10
    filters: dict[str, Any] | None = None
    classify: tuple[Any, ...] = ()  # (class_names, templates, prompt_modality, adapter)
    future: Future = field(default_factory=Future)

    def group_key(self) -> tuple:
        """Jobs with equal keys can share one ``Searcher`` call."""
        if self.kind == "search":
            filters = None if not self.filters else json.dumps(self.filters, sort_keys=True)
            return ("search", self.modality, self.index, filters)
        if self.kind == "encode":
            return ("encode", self.modality)
        return ("classify", id(self))  # one item per call: nothing to share


class Batcher:
    """The worker thread and its bounded queue. ``searcher_or_factory`` is a ``Searcher`` or a
    callable returning one; a factory runs in the worker thread, so the model is created by the
    thread that will use it."""

    def __init__(
        self,
        searcher_or_factory: SearcherSource,
        *,
        batch_wait_ms: float = 3.0,
        max_batch: int = 64,
        max_queue: int = 1024,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1 or batch_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"max_batch={max_batch}, batch_wait_ms={batch_wait_ms}, max_queue={max_queue}")
        self._source = searcher_or_factory
        is_factory = callable(searcher_or_factory) and not hasattr(searcher_or_factory, "search")
        self.searcher: Searcher | None = None if is_factory else searcher_or_factory
        self.batch_wait = batch_wait_ms / 1000
        self.max_batch = int(max_batch)
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.watch_queue(self._queue.qsize)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Searcher:
        """Start the worker; returns the ``Searcher`` once it exists (a factory's error is raised here)."""
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="align-serve-worker", daemon=True)
        self._thread.start()
        return ready.result()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, answer every queued one, and end the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)  # blocks while the queue is full: the worker is draining it
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> Future:
        """Queue ``job``; its future resolves to a list of results (one per item) or its error."""
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._thread is None:  # nothing would ever answer it
                raise RuntimeError("the batcher is not started: run the app with its lifespan (`with TestClient(app)`)")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{self._queue.maxsize} requests are waiting") from None
        return job.future

    # ------------------------------------------------------------------ the worker
    def _run(self, ready: Future) -> None:
        try:
            if self.searcher is None:
                self.searcher = self._source()
        except BaseException as err:  # noqa: BLE001 -- handed to start()'s caller
            ready.set_exception(err)
            return
        ready.set_result(self.searcher)
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)
            try:
                self._dispatch(batch)
            except BaseException as err:  # noqa: BLE001 -- a bug here must not leave requests waiting forever
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and whatever arrives within ``batch_wait`` (up to ``max_batch`` items); True
        when the stop marker was met (everything queued before it is in the batch or answered)."""
        batch, items = [first], len(first.items)
        deadline = time.monotonic() + self.batch_wait
        while items < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return self._drain(batch), True
            batch.append(job)
            items += len(job.items)
        return batch, False

    def _drain(self, batch: list[Job]) -> list[Job]:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if job is not _STOP:
                batch.append(job)

    def _dispatch(self, batch: list[Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip abandoned requests
        groups: dict[tuple, list[Job]] = {}
        for job in live:
            groups.setdefault(job.group_key(), []).append(job)
        limit = min(self.max_batch, self.searcher.max_batch)
        for jobs in groups.values():
            for chunk in _chunks(jobs, limit):
                self._run_group(chunk)

    def _run_group(self, jobs: list[Job]) -> None:
        try:
            results = self._call(jobs)
        except Exception as err:  # noqa: BLE001 -- which request caused it is found below
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            for job in jobs:  # one by one: only the request that raises fails
                self._run_group([job])
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _call(self, jobs: list[Job]) -> list[Any]:
        """One ``Searcher`` call for ``jobs`` (same group); per job, its slice of the answer."""
        first, searcher = jobs[0], self.searcher
        items = [item for job in jobs for item in job.items]
        if first.kind == "classify":
            names, templates, prompt_modality, *adapter = first.classify
            result = searcher.classify(
                first.items[0],
                names,
                templates,
                modality=first.modality,
                prompt_modality=prompt_modality,
                adapter=adapter[0] if adapter else None,
            )
            self._observe(1, 1)
            return [result]
        if first.kind == "search":
            k = max(job.k for job in jobs)
            answer = searcher.search(first.modality, items, k, first.filters, first.index)
        elif first.kind == "encode":
            answer = searcher.encode(first.modality, items)
        else:
            raise ValueError(f"unknown job kind {first.kind!r}")
        self._observe(len(jobs), len(items))
        out, start = [], 0
        for job in jobs:
            part = answer[start : start + len(job.items)]
            out.append([hits[: job.k] for hits in part] if first.kind == "search" else part)
            start += len(job.items)
        return out

    def _observe(self, requests: int, items: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch(requests, items)


def _chunks(jobs: list[Job], limit: int) -> list[list[Job]]:
    """Consecutive runs of ``jobs`` of at most ``limit`` items (a job larger than that runs alone)."""
    chunks: list[list[Job]] = []
    current: list[Job] = []
    size = 0
    for job in jobs:
        if current and size + len(job.items) > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(job)
        size += len(job.items)
    if current:
        chunks.append(current)
    return chunks
