"""``align serve``'s HTTP layer (``create_app``) over a tiny model trained on scikit-learn's real digits
(``tests/support/serving.py``). The main check is parity: what the API answers equals what the
``Searcher`` answers for the same request. Endpoint behaviour goes through FastAPI's TestClient; what
depends on a real socket (the bad-input list followed by a good query, the token, a slow client, a
chunked body cut off at the limit) goes through uvicorn on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from align.data.sources.common import DIGIT_NAMES
from align.serve import Upload
from align.serve.service import create_app
from tests.support.serving import digit_png, serve_in_thread

pytestmark = pytest.mark.usefixtures("one_thread")
QUERIES = ["the digit seven.", "a handwritten three.", "a photo of the number zero."]


@pytest.fixture(scope="module")
def client(served):
    """A second app over the served ``Searcher``, driven in-process."""
    with TestClient(create_app(served.searcher)) as c:
        yield c


def same_hits(got: list[dict], expected) -> None:
    assert [h["id"] for h in got] == [h.id for h in expected]
    assert [h["rank"] for h in got] == [h.rank for h in expected]
    assert [h["metadata"] for h in got] == [h.metadata for h in expected]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in expected], rtol=0, atol=1e-6)


def test_health_and_openapi(client, served):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["modalities"] == ["image", "text"]
    assert health["checkpoint"] == str(served.searcher.checkpoint)
    assert health["indexes"]["digits"] == {
        "modality": "image",
        "size": 360,
        "dim": 32,
        "spec": "Flat",
        "fields": ["caption", "label", "row"],
    }
    assert health["indexes"]["files"]["fields"] == ["label", "path", "row"]
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for path in ("/v1/health", "/v1/search", "/v1/search/upload", "/v1/encode", "/v1/classify", "/v1/classify/upload"):
        assert path in paths
    assert {"/v1/items/{index}/{id}", "/v1/items/{index}/{id}/file"} <= paths
    request = schema["components"]["schemas"]["SearchRequest"]
    assert request["additionalProperties"] is False and request["properties"]["k"]["maximum"] == 1000


def test_search_over_http_equals_the_searcher(client, served):
    searcher = served.searcher
    for k, filters in ((10, None), (4, {"label": ["three", "seven"]}), (1, {"row": 5})):
        body = {"index": "digits", "queries": QUERIES, "k": k, **({"filters": filters} if filters else {})}
        answer = client.post("/v1/search", json=body)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        expected = searcher.search("text", QUERIES, k=k, filters=filters, index="digits")
        assert len(results) == 3
        for got, want in zip(results, expected):
            same_hits(got, want)
            assert {h["index"] for h in got} <= {"digits"}
    # over a real socket too (the session's uvicorn server)
    got = httpx.post(f"{served.url}/v1/search", json={"index": "digits", "queries": [QUERIES[0]], "k": 5}).json()
    same_hits(got["results"][0], searcher.search("text", [QUERIES[0]], k=5, index="digits")[0])
    assert got["took_ms"] > 0


def test_upload_search_equals_the_searcher(client, served):
    files = [("files", (f"d{i}.png", digit_png(i), "image/png")) for i in (0, 1)]
    answer = client.post("/v1/search/upload", files=files, data={"modality": "image", "index": "digits", "k": "6"})
    assert answer.status_code == 200, answer.text
    expected = served.searcher.search(
        "image", [Upload(digit_png(0), "d0.png"), Upload(digit_png(1), "d1.png")], k=6, index="digits"
    )
    for got, want in zip(answer.json()["results"], expected):
        same_hits(got, want)
    assert answer.json()["results"][0][0]["id"] == 0  # test row 0 finds itself
    filtered = client.post(
        "/v1/search/upload",
        files=files[:1],
        data={"modality": "image", "index": "digits", "k": "3", "filters": json.dumps({"label": "nine"})},
    ).json()["results"][0]
    assert len(filtered) == 3 and {h["metadata"]["label"] for h in filtered} == {"nine"}


def test_encode_and_classify_equal_the_searcher(client, served):
    searcher = served.searcher
    got = client.post("/v1/encode", json={"modality": "text", "items": QUERIES[:2]}).json()
    assert got["dim"] == 32
    np.testing.assert_allclose(np.array(got["embeddings"]), searcher.encode("text", QUERIES[:2]), atol=1e-6)

    templates = ["a photo of the number {}.", "the digit {}."]
    want = searcher.classify(Upload(digit_png(0), "d.png"), DIGIT_NAMES, templates, modality="image")
    upload = client.post(
        "/v1/classify/upload",
        files={"file": ("d.png", digit_png(0), "image/png")},
        data={"modality": "image", "class_names": json.dumps(DIGIT_NAMES), "templates": json.dumps(templates)},
    )
    assert upload.status_code == 200, upload.text
    assert [c["name"] for c in upload.json()["classes"]] == [n for n, _ in want]
    np.testing.assert_allclose([c["probability"] for c in upload.json()["classes"]], [p for _, p in want], atol=1e-6)
    named = client.post(
        "/v1/classify/upload",
        files={"file": ("d.png", digit_png(0), "image/png")},
        data={"modality": "image", "class_names": json.dumps(DIGIT_NAMES), "templates": "digits"},  # a shipped set
    )
    assert named.status_code == 200 and named.json()["classes"][0]["name"] in DIGIT_NAMES

    text = client.post("/v1/classify", json={"modality": "text", "item": "seven", "class_names": ["seven", "one"]})
    expected = searcher.classify("seven", ["seven", "one"], ["{}"], modality="text")
    assert [(c["name"], pytest.approx(c["probability"], abs=1e-6)) for c in text.json()["classes"]] == expected


def test_items_and_their_recorded_files(client, served, tmp_path):
    item = client.get("/v1/items/files/3").json()
    assert item["has_file"] and item["metadata"]["row"] == 3
    file = client.get("/v1/items/files/3/file")
    assert file.status_code == 200 and file.content == open(item["metadata"]["path"], "rb").read()
    assert file.headers["content-type"] == "image/png" and file.headers["x-content-type-options"] == "nosniff"
    assert client.get("/v1/items/digits/3").json()["has_file"] is False
    for path, needle in (
        ("/v1/items/digits/3/file", "records no file for item 3"),
        ("/v1/items/files/999", "has no item 999"),
        ("/v1/items/nope/1", "no index named 'nope'"),
    ):
        answer = client.get(path)
        assert answer.status_code == 404 and needle in answer.json()["detail"], answer.text
    # the path is the index's, never the client's: a query parameter or a traversal changes nothing
    assert client.get("/v1/items/files/3/file", params={"path": "/etc/passwd"}).content == file.content
    assert client.get("/v1/items/files/..%2F..%2Fetc%2Fpasswd/file").status_code in (404, 422)

    nothing = client.get("/v1/items/files/3/render")
    assert nothing.status_code == 404 and "nothing to draw for a image item" in nothing.json()["detail"]
    # a recorded file that is gone is 404; a recorded HTML file is an attachment, never rendered inline
    page = tmp_path / "x.html"
    page.write_text("<script>alert(1)</script>")
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    metadata = {0: {"path": str(tmp_path / "gone.png")}, 1: {"path": str(page)}, 2: {"path": str(cloud)}}
    stub = type("Stub", (), {"get_metadata": lambda self, i: metadata[i]})()
    app = client.app
    saved = app.state.items["files"]
    app.state.items["files"] = (stub, frozenset(metadata))
    app.state.health["indexes"]["files"]["modality"] = "pointcloud"
    try:
        drawing = client.get("/v1/items/files/2/render")
        assert drawing.status_code == 200 and drawing.headers["content-type"] == "image/png"
        assert drawing.content.startswith(b"\x89PNG") and "sandbox" in drawing.headers["content-security-policy"]
        assert client.get("/v1/items/files/0/render").status_code == 404  # its file is gone
        gone = client.get("/v1/items/files/0/file")
        assert gone.status_code == 404 and "recorded a file that is gone" in gone.json()["detail"]
        html = client.get("/v1/items/files/1/file")
        assert html.headers["content-type"] == "application/octet-stream"
        assert html.headers["content-disposition"].startswith("attachment")
        assert "sandbox" in html.headers["content-security-policy"]
    finally:
        app.state.items["files"] = saved
        app.state.health["indexes"]["files"]["modality"] = "image"


def test_metrics_count_requests_by_endpoint_and_status(client):
    client.post("/v1/search", json={"index": "digits", "queries": ["seven"], "k": 2})
    client.post("/v1/search", json={"index": "digits", "queries": ["seven"], "k": 0})
    text = client.get("/metrics").text
    assert 'align_requests_total{endpoint="/v1/search",status="200"}' in text
    assert 'align_requests_total{endpoint="/v1/search",status="422"}' in text
    assert 'align_request_seconds_bucket{endpoint="/v1/search",le="0.005"}' in text
    assert "align_batch_requests_bucket" in text and "align_queue_depth 0.0" in text


def good_query_answered(url: str, searcher) -> None:
    got = httpx.post(f"{url}/v1/search", json={"index": "digits", "queries": ["the digit four."], "k": 3}, timeout=30)
    assert got.status_code == 200, got.text
    same_hits(got.json()["results"][0], searcher.search("text", ["the digit four."], k=3, index="digits")[0])


PNG = digit_png(0)
S = "/v1/search"
U = "/v1/search/upload"


def upload(files, **data):
    return {"files": files, "data": {"modality": "image", "index": "digits", **data}}


BAD = [
    (
        "malformed JSON",
        S,
        {"content": b'{"queries": [', "headers": {"content-type": "application/json"}},
        422,
        "malformed JSON",
    ),
    ("form to a JSON endpoint", S, {"data": {"queries": "seven"}}, 415, "takes Content-Type application/json"),
    ("JSON to an upload endpoint", U, {"json": {"modality": "image"}}, 415, "multipart/form-data"),
    ("unknown key", S, {"json": {"index": "digits", "querys": ["x"]}}, 422, "querys: Extra inputs are not permitted"),
    ("no queries", S, {"json": {"index": "digits", "queries": []}}, 422, "body.queries: List should have at least 1"),
    (
        "unknown modality",
        S,
        {"json": {"index": "digits", "modality": "smell", "queries": ["x"]}},
        400,
        "no modality 'smell'",
    ),
    ("unknown index", S, {"json": {"index": "nope", "queries": ["x"]}}, 400, "no index named 'nope'"),
    ("which index", S, {"json": {"queries": ["x"]}}, 400, "2 indexes are loaded"),
    ("k = 0", S, {"json": {"index": "digits", "queries": ["x"], "k": 0}}, 422, "body.k: Input should be greater"),
    ("k = 10**9", S, {"json": {"index": "digits", "queries": ["x"], "k": 10**9}}, 422, "body.k: Input should be less"),
    ("k a string", S, {"json": {"index": "digits", "queries": ["x"], "k": "5"}}, 422, "body.k"),
    (
        "unknown filter field",
        S,
        {"json": {"index": "digits", "queries": ["x"], "filters": {"colour": "red"}}},
        400,
        "no metadata field(s) ['colour']",
    ),
    (
        "a 100k-character text",
        S,
        {"json": {"index": "digits", "queries": ["x" * 100_000]}},
        400,
        "string of 100000 characters; the limit is 4096",
    ),
    ("undecodable upload", U, upload({"files": ("cat.png", b"not a png at all", "image/png")}), 400, "cat.png"),
    ("truncated upload", U, upload({"files": ("half.png", PNG[: len(PNG) // 2], "image/png")}), 400, "half.png"),
    ("empty upload", U, upload({"files": ("empty.png", b"", "image/png")}), 400, "empty upload"),
    (
        "filters not JSON",
        U,
        upload({"files": ("d.png", PNG, "image/png")}, filters="{label"),
        422,
        "'filters' is not JSON",
    ),
    ("unknown form field", U, upload({"files": ("d.png", PNG, "image/png")}, colour="red"), 422, "body.colour: Extra"),
    (
        "bad template",
        "/v1/classify",
        {"json": {"item": "x", "class_names": ["a", "b"], "templates": ["no slot"]}},
        400,
        "'no slot' has no '{}'",
    ),
    ("one class", "/v1/classify", {"json": {"item": "x", "class_names": ["a"]}}, 422, "class_names"),
]


@pytest.mark.parametrize("name, path, request_kwargs, status, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_and_the_server_keeps_serving(served, name, path, request_kwargs, status, needle):
    answer = httpx.post(f"{served.url}{path}", timeout=30, **request_kwargs)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["detail"], answer.json()
    good_query_answered(served.url, served.searcher)


def test_token_guards_the_api_but_not_the_page(served):
    with serve_in_thread(create_app(served.searcher, token="s3cret")) as url:
        body = {"index": "digits", "queries": ["seven"], "k": 2}
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
        ):
            answer = httpx.post(f"{url}/v1/search", json=body, headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", headers
            assert "bearer token" in answer.json()["detail"]
        assert httpx.get(f"{url}/v1/health").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{url}/v1/search", json=body, headers=auth).status_code == 200
        assert httpx.get(f"{url}/v1/health", headers=auth).json()["status"] == "ok"
        assert httpx.get(f"{url}/").status_code == 200  # the page loads; it sends the token itself
        assert "HTTPBearer" in httpx.get(f"{url}/openapi.json").json()["components"]["securitySchemes"]


def test_a_slow_client_does_not_block_others(served):
    host, port = served.url.removeprefix("http://").split(":")
    stalled = []
    for partial in (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\n",
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b'application/json\r\nContent-Length: 500\r\n\r\n{"queries": [',
    ):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(partial)  # ... and never finishes
        stalled.append(s)
    try:
        start = time.monotonic()
        for _ in range(3):
            good_query_answered(served.url, served.searcher)
        assert time.monotonic() - start < 20
    finally:
        for s in stalled:
            s.close()


def read_response(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a 413 closes it; a reset after
    the reply, for body bytes it never read, ends the reading too)."""
    s.settimeout(10)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_a_body_over_the_limit_is_cut_off_while_streaming(served):
    limit = 64 * 1024
    with serve_in_thread(create_app(served.searcher, max_body_bytes=limit)) as url:
        host, port = url.removeprefix("http://").split(":")
        # chunked (no Content-Length): the server answers 413 after limit bytes, without the end of the body
        with socket.create_connection((host, int(port)), timeout=10) as s:
            boundary = "xyz"
            s.sendall(
                f"POST /v1/search/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            )
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'.encode()
            s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            chunk = b"\0" * 8192
            for _ in range(2 * limit // len(chunk)):  # up to twice the limit; the terminating chunk is never sent
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if select.select([s], [], [], 0.05)[0]:  # the server has answered: stop sending
                    break
            reply = read_response(s)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"larger than the server's limit of 65536 bytes" in reply
        # a declared Content-Length over the limit: 413 before a byte of the body is sent
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000000\r\n\r\n"
            )
            reply = read_response(s)
        assert reply.startswith(b"HTTP/1.1 413") and b"1000000000 bytes" in reply
        good_query_answered(url, served.searcher)
        metrics = httpx.get(f"{url}/metrics").text
        assert 'align_requests_total{endpoint="/v1/search/upload",status="413"} 1.0' in metrics


def test_classify_with_an_adapter_over_http(adapt_run, tmp_path):
    """POST /v1/classify(/upload) with ``adapter`` answers as the searcher does; health lists the heads."""
    import httpx

    from align.serve import Searcher
    from align.serve.service import create_app
    from tests.support.adapting import fit_heads
    from tests.support.serving import serve_in_thread

    searcher = Searcher(adapt_run, {}, adapters=fit_heads(adapt_run, ["coop-csc"], tmp_path))
    with serve_in_thread(create_app(searcher)) as url, httpx.Client(base_url=url, timeout=60) as http:
        health = http.get("/v1/health").json()
        assert health["adapters"]["coop-csc"] == {
            "method": "coop-csc", "query": "image", "classes": DIGIT_NAMES, "any_classes": False,
        }  # fmt: skip
        got = http.post(
            "/v1/classify/upload",
            files={"file": ("d.png", digit_png(5), "image/png")},
            data={"modality": "image", "adapter": "coop-csc"},
        )
        assert got.status_code == 200, got.text
        want = searcher.classify(Upload(digit_png(5), "d.png"), None, None, modality="image", adapter="coop-csc")
        assert [(c["name"], pytest.approx(c["probability"], abs=1e-6)) for c in got.json()["classes"]] == want
        bad = http.post("/v1/classify", json={"modality": "image", "item": "x", "adapter": "nope"})
        assert bad.status_code == 400 and "no adapter named 'nope'" in bad.text
