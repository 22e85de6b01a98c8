"""The search page (``align/serve/static``) in a real headless Chromium, against a real ``align serve``.

The server is ``tests/support/serving.py``'s: a tiny image<->text model trained 150 steps on
scikit-learn's digits, index ``digits`` (the 360 test images, captions, no files) and index ``files``
(40 of them written as PNGs, which the item-file endpoint serves as thumbnails). The browser is
Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run`` with apt) driven by
Playwright's Python API; Playwright's own downloaded browsers are never used. Without the browser
or the ``playwright`` package the tests skip, saying which is missing.

Checked: a text query shows the digit it names (the page's cards are exactly the ``Searcher``'s
hits) with the server's and the round trip's latency; a filter built from the health fields; an
image query by the file picker and by a dropped file (a synthetic ``drop`` event carrying a
``DataTransfer``), with thumbnails that loaded; the bearer token (kept in localStorage, sent on every
call, thumbnails fetched with it); metadata shown as text, never as markup; a molecule result drawn
with ``align.serve.render``; and no request leaving the server's origin. The page runs under its own
Content-Security-Policy, so waits here poll with ``page.evaluate`` (Playwright's
``wait_for_function`` evaluates strings, which the policy forbids).

A screenshot of the page after an image query is saved to pytest's ``tmp_path`` and, when
``ALIGN_SCREENSHOT_DIR`` is set, there too (``docs/search-page.png`` was taken so).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1100, "height": 800}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's package: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


class Tab:
    """A fresh browser context and page, recording console errors and every request's URL."""

    def __init__(self, browser, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, indexes: int = 2) -> None:
        self.page.goto(self.url + "/")
        self.wait(f"document.querySelectorAll('#index option').length === {indexes}", "the index list from /v1/health")

    def wait(self, condition: str, what: str, timeout: float = 30.0):
        """Poll the JS expression ``condition`` (``$(id)``: the element) until truthy; a poll, because
        Playwright's ``wait_for_function`` evaluates a string, which the page's CSP forbids."""
        deadline = time.monotonic() + timeout
        poll = f"() => {{ const $ = (id) => document.getElementById(id); return {condition}; }}"
        while True:
            value = self.page.evaluate(poll)
            if value:
                return value
            if time.monotonic() > deadline:
                shown = self.page.evaluate("() => ['status', 'error'].map((i) => document.getElementById(i).innerText)")
                raise AssertionError(f"timed out waiting for {what} ({condition}); status/error: {shown}")
            time.sleep(0.05)

    def search_text(self, query: str, k: int, index: str) -> None:
        page = self.page
        page.select_option("#index", index)
        page.fill("#k", str(k))
        page.fill("#query", query)
        page.click("#go")
        self.wait_results(f"“{query}”")

    def wait_results(self, what: str) -> None:
        """Until the status line reports the answer to ``what`` (the query in quotes, or a file name)."""
        self.wait(f"$('status').textContent.includes({json.dumps(f'for {what}: ')})", f"the results for {what}")

    def cards(self) -> list[dict[str, str]]:
        """Each result card's facts (rank, score, label, caption, id, file) as shown."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll('#results li')].map(li => Object.fromEntries(
                [...li.querySelectorAll('dt')].map(dt => [dt.textContent, dt.nextElementSibling.textContent])))"""
        )

    def thumbnails_loaded(self) -> list[dict]:
        """Scroll every result image into view (they load lazily) and wait until each has decoded."""
        images = self.page.locator("#results img")
        for i in range(images.count()):
            images.nth(i).scroll_into_view_if_needed()
        self.wait(
            "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)",
            "the thumbnails to load",
        )
        return self.page.evaluate(
            "() => [...document.querySelectorAll('#results img')].map(i => ({src: i.src, alt: i.alt, "
            "width: i.naturalWidth, loading: i.loading}))"
        )

    def close(self, allowed_errors: str | None = None) -> None:
        foreign = [u for u in self.requests if not u.startswith((self.url + "/", "blob:", "data:"))]
        errors = [e for e in self.errors if not (allowed_errors and re.search(allowed_errors, e))]
        self.context.close()
        assert not foreign, f"the page asked for URLs outside its server: {foreign}"
        assert not errors, f"console errors: {errors}"


@pytest.fixture
def tab(browser, served):
    tab = Tab(browser, served.url)
    yield tab
    tab.close()


def screenshot(tab: Tab, tmp_path: Path, name: str = "search-page.png") -> Path:
    path = tmp_path / name
    tab.page.screenshot(path=str(path))
    if os.environ.get("ALIGN_SCREENSHOT_DIR"):
        target = Path(os.environ["ALIGN_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_a_text_query_shows_that_digit_with_its_latency(tab, served):
    tab.open()
    health = tab.page.evaluate("() => fetch('v1/health').then(r => r.json())")
    options = tab.page.eval_on_selector_all("#index option", "os => os.map(o => o.value)")
    assert options == list(health["indexes"]) == ["digits", "files"]

    tab.search_text("a handwritten seven.", k=5, index="digits")
    cards = tab.cards()
    (hits,) = served.searcher.search("text", ["a handwritten seven."], k=5, index="digits")
    assert [c["id"] for c in cards] == [str(h.id) for h in hits]  # the page shows the service's hits, in order
    assert [c["rank"] for c in cards] == ["1", "2", "3", "4", "5"]
    assert [c["score"] for c in cards] == [f"{h.score:.4f}" for h in hits]
    assert [c["caption"] for c in cards] == [h.metadata["caption"] for h in hits]
    assert [c["label"] for c in cards[:3]] == ["seven"] * 3, cards  # what the tiny model learned: top 3 are sevens
    assert tab.page.locator("#results img").count() == 0  # index 'digits' records no files: no thumbnails asked for

    status = tab.page.inner_text("#status")
    took, round_trip = re.search(r"([\d.]+) ms on the server, (\d+) ms round trip", status).groups()
    assert 0 < float(took) and float(took) <= float(round_trip) + 1, status


def test_a_filter_from_the_health_fields(tab, served):
    tab.open()
    tab.page.select_option("#index", "digits")
    fields = tab.page.eval_on_selector_all("#filter-field option", "os => os.map(o => o.value)")
    assert fields == ["", *served.searcher.indexes["digits"].fields] and "label" in fields
    tab.page.select_option("#filter-field", "label")
    tab.page.fill("#filter-value", "three, eight")
    tab.search_text("a handwritten seven.", k=6, index="digits")
    labels = [c["label"] for c in tab.cards()]
    (hits,) = served.searcher.search(
        "text", ["a handwritten seven."], k=6, index="digits", filters={"label": ["three", "eight"]}
    )
    assert labels == [h.metadata["label"] for h in hits] and set(labels) <= {"three", "eight"} and len(labels) == 6


def test_an_image_query_by_picker_and_by_drop_shows_loaded_thumbnails(tab, served, digits_run, tmp_path):
    picked, dropped = digits_run.pngs[0], digits_run.pngs[3]  # one and six: both in index 'files'
    tab.open()
    tab.page.select_option("#index", "files")
    tab.page.fill("#k", "8")
    tab.page.set_input_files("#file", str(picked))
    tab.wait_results(picked.name)
    cards = tab.cards()
    assert len(cards) == 8 and cards[0]["file"] == picked.name and float(cards[0]["score"]) > 0.999  # itself first
    assert cards[0]["label"] == picked.name.split("_")[0]
    thumbs = tab.thumbnails_loaded()
    assert len(thumbs) == 8 and all(t["width"] > 0 and t["loading"] == "lazy" for t in thumbs)
    assert all(re.search(r"/v1/items/files/\d+/file$", t["src"]) for t in thumbs) and thumbs[0]["alt"].startswith(
        "Result 1"
    )
    assert tab.page.evaluate("() => document.querySelector('#query-file img').naturalWidth") > 0  # the query's preview

    # a file dropped on the zone: a real drop event carrying a DataTransfer with the file in it
    data = base64.b64encode(dropped.read_bytes()).decode()
    tab.page.evaluate(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: 'image/png'}));
            const zone = document.getElementById('drop');
            zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [dropped.name, data],
    )
    tab.wait_results(dropped.name)
    cards = tab.cards()
    assert cards[0]["file"] == dropped.name and cards[0]["label"] == "six" and float(cards[0]["score"]) > 0.999
    assert all(t["width"] > 0 for t in tab.thumbnails_loaded())
    assert tab.page.input_value("#file") == ""  # the picker no longer names the query
    tab.page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    shot = screenshot(tab, tmp_path)
    assert shot.stat().st_size > 10_000


def test_the_bearer_token_is_kept_and_sent(browser, served):
    from align.serve.service import create_app
    from tests.support.serving import serve_in_thread

    with serve_in_thread(create_app(served.searcher, token="s3cret")) as url:
        tab = Tab(browser, url)
        tab.page.goto(url + "/")  # the page itself needs no token
        tab.wait("$('error').textContent.includes('HTTP 401')", "health refused without the token")
        assert tab.page.locator("#index option").count() == 0
        tab.page.click("#auth summary")
        tab.page.fill("#token", "s3cret")
        tab.page.dispatch_event("#token", "change")
        tab.wait("document.querySelectorAll('#index option').length === 2", "health with the token")
        tab.search_text("a handwritten nine.", k=4, index="files")
        thumbs = tab.thumbnails_loaded()  # fetched with the header, shown from blob: URLs
        assert len(thumbs) == 4 and all(t["src"].startswith("blob:") and t["width"] > 0 for t in thumbs)
        assert tab.page.evaluate("() => localStorage.getItem('align.token')") == "s3cret"
        tab.open()  # a reload finds the token in localStorage
        assert tab.page.input_value("#token") == "s3cret"
        tab.close(allowed_errors=r"status of 401")


def fake_api(tab: Tab, health: dict, hits: list[dict], render: tuple[bytes, str] | None = None) -> None:
    """Answer the page's /v1 calls from the test (the page code under test is still the shipped one)."""
    tab.page.route("**/v1/health", lambda route: route.fulfill(json=health))
    tab.page.route("**/v1/search", lambda route: route.fulfill(json={"results": [hits], "took_ms": 1.5}))
    if render is not None:
        tab.page.route("**/render", lambda route: route.fulfill(body=render[0], content_type=render[1]))


def test_metadata_is_shown_as_text_never_as_markup(tab):
    evil = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    health = {"status": "ok", "checkpoint": evil, "modalities": ["text"], "indexes": {}}
    health["indexes"]["t<i>"] = {"modality": "text", "size": 1, "dim": 4, "fields": [evil]}
    hit = {"id": 7, "score": 0.5, "rank": 1, "index": "t<i>", "metadata": {"label": evil, "caption": evil, "x": evil}}
    fake_api(tab, health, [hit])
    tab.open(indexes=1)
    tab.search_text("anything", k=1, index="t<i>")
    card = tab.cards()[0]
    assert card["label"] == card["caption"] == card["x"] == evil
    assert tab.page.locator("#results b, #results img, #server b, #filter-field b").count() == 0
    assert tab.page.get_attribute("#server", "title") == evil and "<b>" in tab.page.inner_text("#server")
    assert tab.page.evaluate("() => window.pwned") is None


def test_a_molecule_result_is_drawn_and_its_smiles_shown(tab):
    pytest.importorskip("rdkit", reason="molecule drawings need rdkit (the graph extra)")
    from align.serve.render import render_item

    smiles = "CC(=O)Oc1ccccc1C(=O)O"
    drawing = render_item("graph", {"path": smiles})
    assert drawing is not None and drawing[1] == "image/svg+xml" and drawing[0].startswith(b"<?xml")
    assert render_item("graph", {"path": "C1CC(("}) is None and render_item("image", {"path": smiles}) is None
    health = {"status": "ok", "checkpoint": "c", "modalities": ["graph", "text"], "indexes": {}}
    health["indexes"]["mols"] = {"modality": "graph", "size": 1, "dim": 4, "fields": ["label"]}
    meta = {"row": 0, "path": smiles, "label": "aspirin"}
    hit = {"id": 0, "score": 0.9, "rank": 1, "index": "mols", "metadata": meta}
    fake_api(tab, health, [hit], render=drawing)
    tab.open(indexes=1)
    tab.search_text("an analgesic", k=1, index="mols")
    thumbs = tab.thumbnails_loaded()
    assert len(thumbs) == 1 and thumbs[0]["src"].endswith("/v1/items/mols/0/render") and thumbs[0]["width"] > 0
    assert tab.page.inner_text("#results figcaption") == smiles and tab.cards()[0]["label"] == "aspirin"


def test_pointcloud_and_graph_file_drawings_are_pngs(tmp_path):
    import numpy as np

    from align.serve.render import render_item

    cloud = np.random.default_rng(0).normal(size=(3000, 3)) * [1.0, 0.3, 0.6]
    np.save(tmp_path / "cloud.npy", cloud)
    png, media_type = render_item("pointcloud", {"path": str(tmp_path / "cloud.npy")})
    assert media_type == "image/png" and png.startswith(b"\x89PNG")
    assert render_item("pointcloud", {"path": str(tmp_path / "cloud.npy")})[0] == png  # deterministic
    assert render_item("pointcloud", {"row": 3}) is None and render_item("pointcloud", {"path": "gone.npy"}) is None
    pytest.importorskip("networkx", reason="graph files need networkx (the graph extra)")
    import networkx as nx

    nx.write_graphml(nx.cycle_graph(6), tmp_path / "ring.graphml")
    png, media_type = render_item("graph", {"path": str(tmp_path / "ring.graphml")})
    assert media_type == "image/png" and png.startswith(b"\x89PNG")
