"""uvicorn settings for ``align serve``, and running it so that SIGTERM drains and exits 0.

Why these values:

* ``timeout_keep_alive=5``: an idle keep-alive connection is closed after 5 s, so idle clients do
  not pin sockets;
* ``h11_max_incomplete_event_size=16 KiB``: request line + headers beyond that are refused (h11),
  so a client cannot make the server buffer an endless header block;
* ``limit_concurrency=256``: connections and tasks beyond that get 503 at once. A client that opens
  a connection and sends half a request occupies one of these and nothing else (the event loop
  never waits for it), so it slows no other request; many such clients are bounded by this limit
  (uvicorn has no timeout for a request head that never completes: put a reverse proxy in front of
  a server reachable by untrusted clients);
* ``timeout_graceful_shutdown=30``: on SIGTERM uvicorn stops accepting, lets in-flight requests
  finish for up to 30 s, then runs the app's shutdown (the batching worker answers what is queued).
"""

from __future__ import annotations

import signal
from typing import Any

DEFAULTS: dict[str, Any] = {
    "timeout_keep_alive": 5,
    "h11_max_incomplete_event_size": 16 * 1024,
    "limit_concurrency": 256,
    "timeout_graceful_shutdown": 30,
    "server_header": False,
    "proxy_headers": False,  # client addresses are the socket's: no proxy is assumed
    "lifespan": "on",
    "log_level": "info",
}


def server_config(app: Any, host: str, port: int, **overrides: Any):
    """``uvicorn.Config`` for ``app`` with ``DEFAULTS`` (``overrides`` win)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, **{**DEFAULTS, **overrides})


def run_server(app: Any, host: str, port: int, **overrides: Any) -> bool:
    """Serve until SIGTERM / SIGINT; True when the server had started (False: it could not bind or
    the app failed to start, which uvicorn has logged).

    uvicorn handles the signal (graceful shutdown) and then raises it again for the handler that was
    installed before it ran. With the default SIGTERM handler that would kill the process after a
    clean drain (exit -15), so a no-op handler is installed for the duration: a drained SIGTERM
    is an ordinary end, exit 0. SIGINT keeps its handler (KeyboardInterrupt, exit 130)."""
    import uvicorn

    server = uvicorn.Server(server_config(app, host, port, **overrides))
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except SystemExit:  # uvicorn's own exit on a bind / start-up failure, after logging why
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return bool(server.started)
