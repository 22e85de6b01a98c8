"""align.serve.client / `align query --server URL`: the same answer as loading the index here, from a
running service, without importing torch; errors from the server are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from align.app.cli import main
from align.serve.client import remote_search
from align.serve.service import create_app
from tests.support.serving import digit_png, serve_in_thread

REPO = Path(__file__).resolve().parents[2]


def test_query_server_prints_what_the_local_query_prints(served, digits_run, capsys):
    args = ["--text", "a handwritten seven.", "-k", "3"]
    assert main(["query", "--index", str(digits_run.folders["digits"]), *args]) == 0
    local = capsys.readouterr().out
    assert main(["query", "--server", served.url, "--index", "digits", *args]) == 0
    assert capsys.readouterr().out == local and local.count("\n") == 3


def test_a_file_query_is_uploaded_and_matches_the_searcher(served, digits_run, tmp_path):
    png = tmp_path / "digit.png"
    png.write_bytes(digit_png(3))
    hits = remote_search(served.url, "image", str(png), 5, index="files")
    expected = served.searcher.search("image", [png.read_bytes()], k=5, index="files")[0]
    assert [h["id"] for h in hits] == [h.id for h in expected]


def test_server_errors_are_one_line(served, digits_run, capsys):
    assert main(["query", "--server", served.url, "--index", "nope", "--text", "seven"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("align: error: ") and "HTTP 400" in err and "nope" in err and err.count("\n") == 1
    with serve_in_thread(create_app(served.searcher, token="s3cret")) as url:
        assert main(["query", "--server", url, "--index", "digits", "--text", "seven"]) == 2
        assert "HTTP 401" in capsys.readouterr().err
        assert main(["query", "--server", url, "--index", "digits", "--text", "seven", "--token", "s3cret"]) == 0


def test_the_client_imports_no_torch(served):
    code = (
        "import sys\nfrom align.app.cli import main\n"
        f"rc = main(['query', '--server', {served.url!r}, '--index', 'digits', '--text', 'a seven', '-k', '1'])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    env = {**os.environ, "ALIGN_CPU_DEFAULTS": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stderr
