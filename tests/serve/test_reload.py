"""An index folder rebuilt on disk while ``align serve`` runs is picked up without a restart
(``align/serve/reload.py``): real index folders of the digits model (``tests/support/serving.py``),
replaced the way ``EmbeddingIndex.save(overwrite=True)`` replaces them, a real ``Searcher`` and a real
uvicorn server on a free loopback port. A folder that fails to load (damaged, another model's, not
there for a moment) leaves the old index answering, and says so in health, metrics and the log."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from align.index.embedding_index import EmbeddingIndex
from align.io.atomic import atomic_folder
from align.serve.reload import IndexReloader
from align.serve.searcher import Searcher
from align.serve.service import create_app
from tests.support.serving import serve_in_thread

pytestmark = pytest.mark.usefixtures("one_thread")
ZEBRA = "a striped zebra."  # no digit caption: the added item is the one vector that equals its embedding
EXTRA = {"row": 10_000, "label": "zebra", "caption": ZEBRA}


@pytest.fixture
def live(digits_run, tmp_path) -> tuple[Searcher, Path]:
    """A private copy of the digits index folder (360 items) and a ``Searcher`` over it; another
    copy, ``pristine(folder)``, to rebuild from once the live one is damaged."""
    folder = tmp_path / "digits"
    shutil.copytree(digits_run.folders["digits"], folder)
    shutil.copytree(digits_run.folders["digits"], pristine(folder))
    return Searcher(digits_run.run, {"digits": folder}), folder


def pristine(folder: Path) -> Path:
    return folder.with_name("pristine")


def bigger(searcher: Searcher, folder: Path, out: Path | None = None, **save: Any) -> Path:
    """``folder``'s index plus one item (``EXTRA``, its vector the embedding of ``ZEBRA``), saved over
    ``out`` (default: ``folder`` itself, replaced atomically as ``align index build --overwrite`` does)."""
    emb = EmbeddingIndex.load(folder)
    emb.add(searcher.encode("text", [ZEBRA]), metadata=[dict(EXTRA)])
    return emb.save(out or folder, overwrite=True, **save)


def damaged_over(searcher: Searcher, folder: Path, staging: Path) -> None:
    """A bigger index with one byte of its index.faiss flipped, moved in over ``folder`` in one rename."""
    bigger(searcher, folder, staging)
    with open(staging / "index.faiss", "r+b") as f:
        f.seek(os.path.getsize(staging / "index.faiss") // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with atomic_folder(folder, exists="replace") as tmp:
        shutil.copytree(staging, tmp, dirs_exist_ok=True)


def wait_for(what: str, done: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := done():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def health(url: str, **kw: Any) -> dict:
    return httpx.get(f"{url}/v1/health", timeout=30, **kw).json()["indexes"]["digits"]


def top_hit(url: str, **kw: Any) -> dict:
    body = {"index": "digits", "queries": [ZEBRA], "k": 3}
    answer = httpx.post(f"{url}/v1/search", json=body, timeout=30, **kw)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"][0][0]


def test_a_bigger_folder_is_served_after_the_next_poll_without_a_restart(live):
    searcher, folder = live
    with serve_in_thread(create_app(searcher, reload_interval=0.1)) as url:
        assert health(url)["size"] == 360
        assert top_hit(url)["metadata"]["label"] != "zebra"
        filtered = {"index": "digits", "queries": ["x"], "filters": {"label": "zebra"}}
        assert httpx.post(f"{url}/v1/search", json=filtered).json()["results"] == [[]]  # no zebra yet

        bigger(searcher, folder)
        wait_for("the health endpoint shows 361 items", lambda: health(url)["size"] == 361)
        hit = top_hit(url)
        assert hit["id"] == 360 and hit["metadata"] == EXTRA and hit["score"] == pytest.approx(1.0, abs=1e-5)
        # the metadata filter and the item endpoint follow the new index
        answer = httpx.post(f"{url}/v1/search", json=filtered).json()["results"][0]
        assert [h["id"] for h in answer] == [360]
        assert httpx.get(f"{url}/v1/items/digits/360").json()["metadata"] == EXTRA
        assert "reload_error" not in health(url)
        metrics = httpx.get(f"{url}/metrics").text
        assert 'align_index_reloads_total{index="digits",result="ok"} 1.0' in metrics
        assert searcher.generation == 1 and len(searcher.loaded_index("digits")) == 361


def test_a_damaged_folder_keeps_the_old_index_serving_until_a_good_one_comes(live, tmp_path, caplog):
    searcher, folder = live
    caplog.set_level(logging.WARNING, logger="align.serve.reload")
    with serve_in_thread(create_app(searcher, reload_interval=0.1)) as url:
        before = top_hit(url)
        damaged_over(searcher, folder, tmp_path / "staging")
        error = wait_for("health shows a reload error", lambda: health(url).get("reload_error"))
        assert "index.faiss" in error and "still serving the previous 360 items" in error, error
        assert health(url)["size"] == 360 and top_hit(url) == before  # the old one answers as before
        time.sleep(0.5)  # several more polls of the same damaged folder: no new log line, no new count
        warnings = [r.getMessage() for r in caplog.records if r.name == "align.serve.reload"]
        assert len(warnings) == 1 and str(folder) in warnings[0] and "index.faiss" in warnings[0], warnings
        assert "\n" not in warnings[0]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'align_index_reloads_total{index="digits",result="error"} 1.0' in metrics
        assert 'result="ok"' not in metrics

        bigger(searcher, pristine(folder), folder)
        wait_for("the good folder is served", lambda: health(url)["size"] == 361)
        assert "reload_error" not in health(url)
        assert top_hit(url)["metadata"] == EXTRA
        assert 'align_index_reloads_total{index="digits",result="ok"} 1.0' in httpx.get(f"{url}/metrics").text


def test_the_reload_endpoint_checks_now_and_says_what_happened(live, tmp_path):
    searcher, folder = live
    auth = {"Authorization": "Bearer s3cret"}
    with serve_in_thread(create_app(searcher, token="s3cret", reload_interval=0)) as url:  # no polling
        post = lambda name, **kw: httpx.post(f"{url}/v1/indexes/{name}/reload", timeout=30, **kw)  # noqa: E731
        assert post("digits").status_code == 401  # the token rule of every /v1 path
        assert post("digits", headers={"Authorization": "Bearer wrong"}).status_code == 401
        same = post("digits", headers=auth)
        assert same.status_code == 200, same.text
        assert same.json() == dict(index="digits", result="unchanged", size=360, previous_size=360, error=None)

        bigger(searcher, folder)
        time.sleep(0.3)
        assert health(url, headers=auth)["size"] == 360  # polling is off: nothing changes by itself
        got = post("digits", headers=auth).json()
        assert got == {"index": "digits", "result": "reloaded", "size": 361, "previous_size": 360, "error": None}
        assert health(url, headers=auth)["size"] == 361 and top_hit(url, headers=auth)["metadata"] == EXTRA
        assert post("digits", headers=auth).json()["result"] == "unchanged"

        damaged_over(searcher, folder, tmp_path / "staging")
        refused = post("digits", headers=auth).json()
        assert refused["result"] == "error" and refused["size"] == 361 and "index.faiss" in refused["error"]
        assert health(url, headers=auth)["reload_error"] == refused["error"]
        assert top_hit(url, headers=auth)["metadata"] == EXTRA  # the last good index answers

        unknown = post("nope", headers=auth)
        assert unknown.status_code == 404 and "no index named 'nope'" in unknown.json()["detail"]
        assert "['digits']" in unknown.json()["detail"]
        assert "/v1/indexes/{name}/reload" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_a_folder_built_with_another_model_is_refused_and_a_missing_one_waited_for(live, caplog):
    searcher, folder = live
    caplog.set_level(logging.WARNING, logger="align.serve.reload")
    reloader = IndexReloader(searcher)
    assert reloader.check("digits").result == "unchanged"

    bigger(searcher, folder, model=f"sha256:0123456789abcdef {folder.parent / 'another-run'}")
    refused = reloader.check("digits")
    assert refused.result == "error" and refused.size == 360 and "different model" in refused.error, refused
    assert len(searcher.loaded_index("digits")) == 360 and searcher.generation == 0
    hits = searcher.search("text", [ZEBRA], k=1, index="digits")[0]
    assert hits[0].metadata["label"] != "zebra"
    assert reloader.check_all()[0].error == refused.error  # a poll does not load it again ...
    assert len([r for r in caplog.records if r.name == "align.serve.reload"]) == 1  # ... nor log it again
    assert reloader.errors == {"digits": refused.error}

    # the moment of a replace: the name is empty; silently retried, the old index serving
    aside = folder.with_name("aside")
    folder.rename(aside)
    gone = reloader.check("digits")
    assert gone.result == "error" and "is not there now" in gone.error and gone.size == 360
    assert len([r for r in caplog.records if r.name == "align.serve.reload"]) == 1
    aside.rename(folder)

    bigger(searcher, pristine(folder), folder)  # rebuilt with this model: accepted, the error cleared
    assert reloader.check("digits").result == "reloaded"
    assert reloader.errors == {} and searcher.search("text", [ZEBRA], k=1)[0][0].metadata == EXTRA


def test_searches_during_reloads_all_succeed(live):
    searcher, folder = live
    failures: list[str] = []
    sizes: set[int] = set()
    stop = threading.Event()
    with serve_in_thread(create_app(searcher, reload_interval=0.05)) as url:

        def hammer() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    answer = client.post(f"{url}/v1/search", json={"queries": ["the digit four."], "k": 400})
                    if answer.status_code != 200:
                        failures.append(answer.text)
                    else:
                        sizes.add(len(answer.json()["results"][0]))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            for n in (361, 362):
                bigger(searcher, folder)
                wait_for(f"{n} items served", lambda n=n: len(searcher.loaded_index("digits")) == n)
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join(60)
    assert not failures, failures[:3]
    assert 362 in sizes and sizes <= {360, 361, 362}, sizes  # every answer is one whole index


def test_reload_interval_is_checked(capsys):
    from align.app.cli import main

    assert main(["serve", "--index", "a=b", "--reload-interval", "-1"]) == 2
    assert "--reload-interval must be 0 (off) or more seconds" in capsys.readouterr().err
