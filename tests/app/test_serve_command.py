"""``align serve`` (``align/app/serve_command.py``): refusals before anything is bound (a non-loopback
host without a token, a stale index folder, a missing extra), a help that imports neither torch nor
fastapi, and a real server process that drains a burst of requests on SIGTERM and exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from align.app.cli import main
from tests.support.serving import digits_run, free_port  # noqa: F401  (digits_run: a pytest fixture)

REPO = Path(__file__).resolve().parents[2]


def test_help_imports_neither_torch_nor_fastapi():
    code = (
        "import sys\nfrom align.app.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'faiss') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--host", "0.0.0.0", "--index", "a=b"], r"--host 0.0.0.0 is reachable from other machines: give --token"),
        (["--index", "nameless"], r"--index 'nameless': expected NAME=DIR"),
        ([], r"needs at least one --index NAME=DIR"),
        (["--index", "a=b", "--max-batch", "0"], r"--max-batch must be at least 1"),
    ],
)
def test_refusals_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    import re

    monkeypatch.delenv("ALIGN_SERVE_TOKEN", raising=False)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err


def test_a_missing_serve_extra_is_one_line(capsys, monkeypatch):
    import align.extras

    monkeypatch.setattr(align.extras, "installed", lambda module: module != "fastapi")
    assert main(["serve", "--index", "a=b"]) == 2
    assert capsys.readouterr().err == (
        "align: error: align serve needs fastapi, which is not installed: pip install 'align[serve]'\n"
    )


def test_a_stale_index_folder_fails_before_binding(digits_run, tmp_path, capsys):  # noqa: F811
    stale = tmp_path / "stale"
    shutil.copytree(digits_run.folders["digits"], stale)
    with open(stale / "metadata.arrow", "a") as f:
        f.write("\n")  # the manifest's sha256 no longer matches
    port = free_port()
    assert main(["serve", "--checkpoint", str(digits_run.run), "--index", f"d={stale}", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("align: error: ") and "metadata.arrow" in err and err.count("\n") == 1, err
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing was bound


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if httpx.get(f"{url}/v1/health", headers={"Authorization": "Bearer t0k"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"align serve not ready after {timeout} s")


def raw_request(port: int, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer t0k\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return s


def read_all(s: socket.socket) -> tuple[bytes, float]:
    data = b""
    while chunk := s.recv(1 << 16):
        data += chunk
    s.close()
    return data, time.monotonic()


def test_sigterm_answers_every_started_request_then_exits_0(digits_run):  # noqa: F811
    port = free_port()
    env = {**os.environ, "ALIGN_SERVE_TOKEN": "t0k", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "align", "serve", "--checkpoint", str(digits_run.run), "--port", str(port)]
    cmd += ["--index", f"digits={digits_run.folders['digits']}", "--batch-wait-ms", "20"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        queries = [f"the digit {i % 10} drawn by hand, take {i}." for i in range(256)]
        sockets = [raw_request(port, {"queries": queries, "k": 50}) for _ in range(24)]  # ~0.1 s of work each
        time.sleep(0.3)  # every request is read by the server (the event loop is never busy with torch)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        replies = [read_all(s) for s in sockets]
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stderr = proc.stderr.read().decode()
    for reply, _ in replies:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (reply[:300], stderr[-2000:])
        results = json.loads(body)["results"]
        assert len(results) == 256 and all(len(hits) == 50 for hits in results)
    assert code == 0, stderr[-2000:]
    assert max(t for _, t in replies) > sent, "every reply came before SIGTERM: the burst drained nothing"
    assert "Shutting down" in stderr or "shutting down" in stderr.lower()
