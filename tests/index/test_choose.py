"""align.index.choose: an index picked for a memory / query-time budget, its estimate checked against
what faiss builds, and the choice scored on cross-modal queries (issue 23 item 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from align.app.cli import main
from align.index.choose import BudgetError, candidates, choose, parse_size
from align.index.embedding_index import EmbeddingIndex
from align.index.score import measure, prepare
from tests.index.test_build import DATA
from tests.index.test_build import built as built  # noqa: F401  (fixture: a tiny checkpoint + index)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sizes_parse():
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("2GB") == 2 * 10**9 and parse_size("800") == 800
    with pytest.raises(ValueError, match="not a size: '12 parsecs'"):
        parse_size("12 parsecs")


def test_budget_walks_from_exact_to_compressed():
    n, d = 100_000, 64
    flat = choose(n, d, 10**12)[0]
    assert flat.spec == "Flat"
    sq8, why = choose(n, d, 10 * 2**20)
    assert sq8.spec.startswith("IVF") and sq8.spec.endswith("SQ8") and "Flat" in why
    pq = choose(n, d, 5 * 2**20)[0]
    assert "PQ" in pq.spec and pq.bytes <= 5 * 2**20
    assert choose(n, d, 10**12, max_query_ms=0.5)[0].spec == "HNSW32"  # exhaustive scans are too slow
    assert choose(5_000, d, 10**12)[0].spec == "Flat" and not any("IVF" in c.spec for c in candidates(5_000, d))
    with pytest.raises(
        BudgetError, match=r"no index of 100,000 vectors of dim 64 fits --max-memory 1\.0 KiB: the smallest"
    ):
        choose(n, d, 1024)


@pytest.mark.parametrize("n,budget", [(20_000, 10**12), (20_000, 3 * 2**20), (20_000, 1 * 2**20)])
def test_estimates_are_what_faiss_builds(n, budget):
    """The chooser's estimate against the built index's serialised size, and its scored recall."""
    d = 64
    x = clustered(n, d)
    chosen, _ = choose(n, d, budget)
    idx = EmbeddingIndex(d, chosen.spec)
    idx.train(x)
    idx.add(x)
    prepare(idx)
    report = measure(idx, x, np.arange(n), {"held-out": clustered(200, d, seed=1)})
    assert 0.6 <= report["memory_bytes"] / chosen.bytes <= 1.5, (chosen, report)
    assert report["memory_bytes"] <= budget
    if chosen.spec == "Flat":
        assert report["recall@10"]["held-out"] == 1.0
    else:
        assert 0.5 < report["recall@10"]["held-out"] <= 1.0  # compressed codes and probing lose some


def test_cli_chooses_records_and_info_shows_it(built, tmp_path, capsys):
    ckpt, _ = built
    out = tmp_path / "budget"
    args = ["index", "build", "--checkpoint", str(ckpt), "--modality", "image", "--data", DATA, "--out", str(out)]
    assert main([*args, "--max-memory", "100B"]) == 2
    assert "no index of 24 vectors of dim 16 fits --max-memory 100 B: the smallest is" in capsys.readouterr().err
    assert main([*args, "--max-memory", "1MiB"]) == 0
    printed = capsys.readouterr().out
    assert "chosen      Flat for max memory 1.0 MiB" in printed and "text -> image (cross-modal)" in printed
    assert main(["index", "info", str(out), "--json"]) == 0
    build = json.loads(capsys.readouterr().out)["build"]
    assert build["chosen"]["spec"] == "Flat" and build["recall@10"]["text -> image (cross-modal)"] == 1.0
    assert main([*args, "--overwrite", "--max-memory", "1MiB", "--factory", "SQ8"]) == 0  # --factory overrides
    assert "(SQ8)" in capsys.readouterr().out
