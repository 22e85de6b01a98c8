"""Dynamic batching (``align.serve.batching.Batcher``): which requests share a ``Searcher`` call, that
one bad request fails alone, that a full queue is refused and a stop drains; and, on the served digits
model, that 16 concurrent HTTP requests are answered by fewer calls (batch sizes > 1) with the same
results as one by one."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import CancelledError

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from align.serve.batching import Batcher, Job, QueueFull
from align.serve.errors import SearchError
from align.serve.searcher import Hit
from align.serve.service import create_app


class FakeSearcher:
    """Records each call; a call can be held until ``release`` is set; an item ``"bad"`` raises."""

    max_batch = 256
    checkpoint, modalities, indexes, index_items = "fake", ["text"], {}, {}

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[tuple] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()
        self.thread: threading.Thread | None = None

    def _enter(self, call: tuple) -> None:
        self.thread = threading.current_thread()
        self.calls.append(call)
        self.entered.set()
        assert self.release.wait(30)

    def search(self, modality, items, k, filters=None, index=None):
        self._enter(("search", modality, tuple(items), k, index, filters))
        if "bad" in items:
            raise SearchError(f"text item {items.index('bad')} is bad")
        return [[Hit(r, 1.0 / r, r, {"q": q}, index or "i") for r in range(1, k + 1)] for q in items]

    def encode(self, modality, items):
        self._enter(("encode", modality, tuple(items)))
        return np.arange(len(items), dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)

    def classify(self, item, names, templates, *, modality, prompt_modality="text"):
        self._enter(("classify", item))
        return [(names[0], 1.0)]


def started(searcher: FakeSearcher, **kwargs) -> Batcher:
    batcher = Batcher(searcher, **{"batch_wait_ms": 1, **kwargs})
    batcher.start()
    return batcher


def held_first(searcher: FakeSearcher, batcher: Batcher) -> Job:
    """A first job the worker is stuck in, so that the next submissions queue up behind it."""
    first = Job("search", "text", ["first"], k=1)
    batcher.submit(first)
    assert searcher.entered.wait(10)
    return first


def test_compatible_jobs_share_one_call_and_each_gets_its_k():
    searcher = FakeSearcher(hold=True)
    batcher = started(searcher)
    first = held_first(searcher, batcher)
    jobs = [Job("search", "text", [f"q{i}", f"r{i}"], index="a", k=k) for i, k in enumerate((2, 5, 3))]
    other_index = Job("search", "text", ["x"], index="b", k=2)
    filtered = Job("search", "text", ["y"], index="a", k=2, filters={"label": "one"})
    encodes = [Job("encode", "text", ["e1"]), Job("encode", "text", ["e2", "e3"])]
    for job in [*jobs, other_index, filtered, *encodes]:
        batcher.submit(job)
    searcher.release.set()
    results = [job.future.result(10) for job in jobs]
    batcher.stop(10)
    assert first.future.result() and searcher.thread.name == "align-serve-worker"
    grouped = [c for c in searcher.calls if c[0] == "search" and c[4] == "a"]
    assert grouped == [
        ("search", "text", ("q0", "r0", "q1", "r1", "q2", "r2"), 5, "a", None),  # one call, the largest k
        ("search", "text", ("y",), 2, "a", {"label": "one"}),  # other filters: a call of its own
    ]
    for job, result in zip(jobs, results):
        assert len(result) == 2 and all(len(hits) == job.k for hits in result)
        assert [h.metadata["q"] for hits in result for h in hits[:1]] == list(job.items)
    assert other_index.future.result()[0][0].index == "b" and len(searcher.calls) == 5  # first, a, b, filtered, encode
    assert [c for c in searcher.calls if c[0] == "encode"] == [("encode", "text", ("e1", "e2", "e3"))]
    assert encodes[1].future.result().tolist() == [[1.0] * 4, [2.0] * 4]


def test_one_bad_request_fails_alone_with_its_own_positions():
    searcher = FakeSearcher(hold=True)
    batcher = started(searcher)
    held_first(searcher, batcher)
    jobs = [Job("search", "text", items, k=1) for items in (["a"], ["b", "bad"], ["c"])]
    for job in jobs:
        batcher.submit(job)
    searcher.release.set()
    assert jobs[0].future.result(10)[0][0].metadata == {"q": "a"}
    assert jobs[2].future.result(10)[0][0].metadata == {"q": "c"}
    with pytest.raises(SearchError, match=r"^text item 1 is bad$"):  # its own batch's position, not the group's
        jobs[1].future.result(10)
    batcher.stop(10)
    assert [c[2] for c in searcher.calls[1:]] == [("a", "b", "bad", "c"), ("a",), ("b", "bad"), ("c",)]


def test_max_batch_splits_a_group_and_cancelled_jobs_are_skipped():
    searcher = FakeSearcher(hold=True)
    batcher = started(searcher, max_batch=4)
    held_first(searcher, batcher)
    jobs = [Job("search", "text", items, k=1) for items in (["gone"], ["a0", "a1"], ["b0", "b1", "b2"])]
    for job in jobs:
        batcher.submit(job)
    assert jobs[0].future.cancel()  # an abandoned request (the client went away)
    searcher.release.set()
    assert len(jobs[1].future.result(10)) == 2 and len(jobs[2].future.result(10)) == 3
    with pytest.raises(CancelledError):
        jobs[0].future.result()
    batcher.stop(10)
    assert [c[2] for c in searcher.calls[1:]] == [("a0", "a1"), ("b0", "b1", "b2")]  # 2 + 3 items > max_batch 4


def test_a_full_queue_is_refused_and_stop_drains_what_is_queued():
    searcher = FakeSearcher(hold=True)
    batcher = started(searcher, max_queue=2)
    held_first(searcher, batcher)
    queued = [batcher.submit(Job("encode", "text", [str(i)])) for i in range(2)]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        batcher.submit(Job("encode", "text", ["one too many"]))
    stopper = threading.Thread(target=batcher.stop, args=(10,))
    stopper.start()
    searcher.release.set()
    stopper.join(10)
    assert [f.result(0).tolist() for f in queued] == [[[0.0] * 4], [[1.0] * 4]]  # answered before the thread ended
    assert not batcher._thread.is_alive()
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit(Job("encode", "text", ["late"]))


def test_a_job_for_a_batcher_never_started_is_refused_not_left_waiting():
    with pytest.raises(RuntimeError, match="not started"):
        Batcher(FakeSearcher()).submit(Job("encode", "text", ["x"]))


def test_a_factory_runs_in_the_worker_and_its_error_reaches_start():
    made = []
    batcher = Batcher(lambda: made.append(threading.current_thread().name) or FakeSearcher())
    assert isinstance(batcher.start(), FakeSearcher) and made == ["align-serve-worker"]
    batcher.stop(10)

    def broken():
        raise SearchError("no such checkpoint")

    with pytest.raises(SearchError, match="no such checkpoint"):
        Batcher(broken).start()


def test_the_service_answers_503_with_retry_after_when_the_queue_is_full():
    searcher = FakeSearcher(hold=True)
    with TestClient(create_app(searcher, max_queue=1, static_dir=None)) as client:
        batcher = client.app.state.batcher
        held_first(searcher, batcher)
        batcher.submit(Job("encode", "text", ["queued"]))
        answer = client.post("/v1/encode", json={"items": ["x"]})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "server busy" in answer.json()["detail"]
        searcher.release.set()


def batch_histogram(text: str) -> tuple[float, float]:
    """(batches answered, batches of one request) from the Prometheus text."""
    count = float(re.search(r"^align_batch_requests_count (\S+)$", text, re.M).group(1))
    ones = float(re.search(r'^align_batch_requests_bucket\{le="1.0"\} (\S+)$', text, re.M).group(1))
    return count, ones


@pytest.mark.usefixtures("one_thread")
def test_concurrent_http_requests_are_batched_with_unchanged_results(served):
    queries = [f"the digit {name}." for name in ("zero", "one", "two", "three", "four", "five", "six", "seven")] * 2

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/search", json={"index": "digits", "queries": [q], "k": 3 + i % 3})
                    for i, q in enumerate(queries)
                )
            )

    before = batch_histogram(httpx.get(f"{served.url}/metrics").text)
    answers = asyncio.run(burst())
    after = batch_histogram(httpx.get(f"{served.url}/metrics").text)
    batches, singles = after[0] - before[0], after[1] - before[1]
    assert all(a.status_code == 200 for a in answers)
    assert batches < 16 and singles < batches, (batches, singles)  # some calls answered several requests
    print(f"16 concurrent requests -> {batches:.0f} Searcher calls ({singles:.0f} of one request)")
    for i, (query, answer) in enumerate(zip(queries, answers)):
        (want,) = served.searcher.search("text", [query], k=3 + i % 3, index="digits")
        (got,) = answer.json()["results"]
        assert [h["id"] for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-5)
