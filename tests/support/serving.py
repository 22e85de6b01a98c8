"""A real ``align serve`` for tests: a tiny image<->text model trained once on scikit-learn's digits,
two image indexes of its test split, and a uvicorn server on a free loopback port.

Use the pytest fixtures by importing them into a conftest (``tests/serve/conftest.py`` does)::

    from tests.support.serving import digits_run, served  # noqa: F401  (pytest fixtures)

    def test_page(served):
        httpx.get(f"{served.url}/v1/health").json()["indexes"]   # {"digits": ..., "files": ...}

``digits_run`` (session): ``DigitsRun(run, folders, pngs)`` -- the checkpoint folder; index folders
``digits`` (the 360 test images, metadata row / label / caption, no files) and ``files`` (the first
``FILE_ITEMS`` test images written as PNGs, whose metadata ``path`` the file endpoint serves); the
PNG paths. ``served`` (session): ``Served(url, searcher, app)``, the server without a token.
For another configuration (a token, a small body limit) start your own with ``serve_in_thread``::

    with serve_in_thread(create_app(searcher, token="t")) as url: ...

Servers bind 127.0.0.1 only, run in a daemon thread, and stop when the ``with`` block (or the
session) ends; a server that does not come up within ``timeout`` seconds fails the test.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from align.data.sources.common import DIGIT_NAMES
from tests.support.tiny import DIGITS_MODEL

DIGITS = "{source: sklearn-digits, split: test, columns: {image: image, text: caption}, label_column: label}"
FILE_ITEMS = 40


@dataclass
class DigitsRun:
    run: Path
    folders: dict[str, Path]
    pngs: list[Path] = field(default_factory=list)


@dataclass
class Served:
    url: str
    searcher: Any
    app: Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digit_png(i: int = 0) -> bytes:
    """Test image ``i`` of scikit-learn's digits as PNG bytes (row ``i`` of the ``digits`` index)."""
    import io

    from align.data.sources.sklearn_digits import sklearn_digits

    buf = io.BytesIO()
    sklearn_digits("test")[i]["image"].save(buf, format="PNG")
    return buf.getvalue()


def train_digits(out: Path, steps: int = 150) -> DigitsRun:
    """Train the tiny model (``steps`` steps, seed 0, about 15 s on one core) and build both indexes."""
    import torch

    from align.app.trainer import train
    from align.config.schema import config_from_dict
    from align.data.sources.sklearn_digits import sklearn_digits
    from align.index.build import build_index, parse_data_spec

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only spin on a shared box
    try:
        cfg = {
            "output_dir": str(out / "run"),
            "seed": 0,
            "model": copy.deepcopy(DIGITS_MODEL),
            "data": {
                "train": {
                    "source": "sklearn-digits",
                    "split": "train",
                    "columns": {"image": "image", "text": "caption"},
                    "label_column": "label",
                },
                "num_workers": 0,
            },
            "train": {"batch_size": 64, "steps": steps, "lr": 2e-3, "warmup_steps": 5, "progress": False},
        }
        train(config_from_dict(cfg))
        pngs = []
        (out / "pngs").mkdir()
        for i, row in enumerate(sklearn_digits("test").select(range(FILE_ITEMS))):
            path = out / "pngs" / f"{DIGIT_NAMES[row['label']]}_{i:03d}.png"
            row["image"].save(path)
            pngs.append(path)
        files = (
            f"{{source: files, data_files: '{out / 'pngs'}/*.png', columns: {{image: path}}, label_column: label,"
            " load_kwargs: {pattern: '^(?P<label>[a-z]+)_(?P<n>[0-9]+)[.]png$'}}"
        )
        folders = {}
        for name, spec in (("digits", DIGITS), ("files", files)):
            index = build_index(out / "run", parse_data_spec(spec), "image", progress=False)
            folders[name] = index.save(out / name)
    finally:
        torch.set_num_threads(before)
    return DigitsRun(out / "run", folders, pngs)


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int | None = None, timeout: float = 60.0, **config: Any) -> Iterator[str]:
    """Run ``app`` on uvicorn at 127.0.0.1 (``align serve``'s settings, ``config`` overriding them)
    in a daemon thread; yields the base URL and stops the server on exit."""
    import uvicorn

    from align.serve.server import server_config

    port = port or free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the test server on port {port} did not start within {timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> DigitsRun:
    return train_digits(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def served(digits_run) -> Iterator[Served]:
    """``align serve`` over ``digits_run`` (both indexes, no token) on a free loopback port."""
    from align.serve.searcher import Searcher
    from align.serve.service import create_app

    searcher = Searcher(digits_run.run, digits_run.folders)
    app = create_app(searcher)
    with serve_in_thread(app) as url:
        yield Served(url, searcher, app)
