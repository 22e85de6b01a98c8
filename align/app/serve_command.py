"""``align serve``: the HTTP search service over a checkpoint and its index folders.

Start-up order is the point: the serve extra is checked, the token rule applied, and the model and
every index loaded and verified (``Searcher``) before the port is bound, so a damaged or stale index
folder is one ``align: error:`` line and exit 2, never a server that answers 500s. Only then does
uvicorn start; SIGTERM drains in-flight requests and exits 0 (``align.serve.server.run_server``).
While serving, the index folders are checked every ``--reload-interval`` seconds and one rebuilt on
disk is loaded and swapped in (``align.serve.reload``; one that fails to load leaves the old serving).

Security defaults: the server binds 127.0.0.1; binding any other address needs a bearer token
(``--token`` or ``$ALIGN_SERVE_TOKEN``) or an explicit ``--insecure-no-token``, which prints a warning.
Module level imports argparse only: ``align --help`` loads neither torch nor fastapi.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

TOKEN_ENV = "ALIGN_SERVE_TOKEN"  # the variable align.serve.client reads too


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="run or checkpoint folder (default: the one the single --index records)")
    p.add_argument(
        "--index", action="append", default=[], metavar="NAME=DIR", help="an index folder to serve (repeatable)"
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a few-shot head from `align adapt` to serve besides those in <checkpoint>/adapted (repeatable)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help=f"bearer token clients must send (default: ${TOKEN_ENV})")
    p.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="allow a non-loopback --host without a token (anyone can query)",
    )
    p.add_argument("--batch-wait-ms", type=float, default=3.0, help="how long the worker gathers a batch (ms)")
    p.add_argument("--max-batch", type=int, default=64, help="items per batched model call")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body accepted (MB)")
    p.add_argument(
        "--reload-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="check the index folders this often and load one that was rebuilt, without a restart (0: never)",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def parse_indexes(pairs: list[str], flag: str = "--index") -> dict[str, str]:
    from align.errors import ConfigError

    if not pairs and flag == "--index":
        raise ConfigError("align serve needs at least one --index NAME=DIR")
    out: dict[str, str] = {}
    example = "--index digits=runs/digits-index" if flag == "--index" else "--adapter coop=runs/x/coop.safetensors"
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(
                f"{flag} {pair!r}: expected NAME={'DIR' if flag == '--index' else 'FILE'}, e.g. {example}"
            )
        if name in out:
            raise ConfigError(f"{flag} {name!r} is given twice")
        out[name] = folder
    return out


def serve_cli(args: argparse.Namespace) -> int:
    from align.errors import ConfigError
    from align.extras import SERVE_MODULES, require_extra

    require_extra("serve", SERVE_MODULES, "align serve")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        if not args.insecure_no_token:
            raise ConfigError(
                f"--host {args.host} is reachable from other machines: give --token (or ${TOKEN_ENV}), "
                "or pass --insecure-no-token to serve without one"
            )
        print(f"align serve: WARNING: no token on {args.host}: anyone who can reach it can query", file=sys.stderr)
    for name, value, low in (("--max-batch", args.max_batch, 1), ("--batch-wait-ms", args.batch_wait_ms, 0)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if args.max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    if not args.reload_interval >= 0:  # also refuses nan
        raise ConfigError(f"--reload-interval must be 0 (off) or more seconds, got {args.reload_interval}")
    indexes = parse_indexes(args.index)
    # a service is a mixed load: the event loop parses requests while the model thread runs torch, so
    # torch's spin-waiting OpenMP threads would take the cores the event loop needs between batches
    # (benchmarks/serve_load.py: measured in the README's serving table); wait passively unless the
    # user chose (their OMP_* settings win; ALIGN_CPU_DEFAULTS=0 turns it off)
    from align.cpu import apply_cpu_defaults

    apply_cpu_defaults(busy=True)

    from align.serve.searcher import Searcher

    adapters = parse_indexes(args.adapter, "--adapter")
    searcher = Searcher(args.checkpoint, indexes, adapters=adapters)  # every file verified before the port is bound

    from align.serve.server import run_server
    from align.serve.service import create_app

    app = create_app(
        searcher,
        token=token,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        batch_wait_ms=args.batch_wait_ms,
        max_batch=args.max_batch,
        reload_interval=args.reload_interval,
    )
    from align.serve.reload import log_to_stderr

    log_to_stderr()  # each reload and each refused folder: one "align serve: ..." line
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"align serve: {searcher.checkpoint} with {', '.join(indexes)}"
        + (f", adapters {', '.join(searcher.adapted)}" if searcher.adapted else "")
        + f" on http://{host}:{args.port}/ "
        f"({'token required' if token else 'no token'}); API docs at /docs",
        file=sys.stderr,
        flush=True,
    )
    if not run_server(app, args.host, args.port):
        print(f"align: error: the server did not start on {args.host}:{args.port} (see above)", file=sys.stderr)
        return 1
    return 0
