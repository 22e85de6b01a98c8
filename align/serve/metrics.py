"""Prometheus metrics of one ``align serve`` app, and the ASGI middleware that counts requests.

Each app has its own ``CollectorRegistry`` (not prometheus_client's global one), so two apps in one
process (tests, or a server restarted in-process) never share or double-register counters. The
endpoint label is the matched route's path template (``/v1/items/{index}/{id}``), never the raw
path, so a client cannot grow the label set by asking for many ids; paths no route matches share
the label ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts by endpoint and status, latency by endpoint, sizes of the batches the worker
    ran (requests and items per ``Searcher`` call), the queue depth (read when scraped), and index
    reloads by index and result (``align.serve.reload``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "align_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "align_request_seconds",
            "time from request start to the end of the response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "align_batch_requests",
            "requests answered by one Searcher call (dynamic batching)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_items = Histogram(
            "align_batch_items", "items encoded by one Searcher call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("align_queue_depth", "requests waiting for the worker", registry=self.registry)
        self.reloads = Counter(
            "align_index_reloads",
            "index folders that changed on disk, loaded (ok) or refused (error; the old one kept serving)",
            ["index", "result"],
            registry=self.registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from ``depth`` at scrape time (no bookkeeping on every put / get)."""
        self.queue_depth.set_function(depth)

    def observe_batch(self, requests: int, items: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_items.observe(items)

    def observe_reload(self, index: str, ok: bool) -> None:
        """One reload attempt of ``index`` (a name the server was started with: a bounded label set)."""
        self.reloads.labels(index, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def endpoint_label(scope: Scope, known: frozenset[str]) -> str:
    """The path template of the route that answered (set in ``scope`` by the router), ``static`` for
    the page's files; for a request refused before routing (401, 413), its path when that is one of
    the app's fixed paths (``known``), else ``unrouted``."""
    route = scope.get("route")
    if isinstance(route, Mount):
        return "static"
    if route is not None and getattr(route, "path", None):
        return route.path
    return scope["path"] if scope["path"] in known else "unrouted"


class MetricsMiddleware:
    """Outermost middleware: every response, including the 401 / 413 the gate sends, is counted."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: Callable[[], frozenset[str]]) -> None:
        self.app, self.metrics = app, metrics
        self._known_paths = known_paths
        self._known: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if self._known is None:
                self._known = self._known_paths()
            label = endpoint_label(scope, self._known)
            self.metrics.requests.labels(label, str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
