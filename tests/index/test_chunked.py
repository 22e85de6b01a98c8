"""align.index.chunked: an index built from chunks through a scratch folder equals one built in one
call, in RAM or with its lists merged on disk, and a build needs memory for a chunk, not for every
vector (checked under an RLIMIT_DATA smaller than the vectors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.index.chunked import Chunk, Spill, build_from_chunks
from align.index.embedding_index import EmbeddingIndex

REPO = Path(__file__).resolve().parents[2]


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    return centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)


def chunks_of(x: np.ndarray, size: int, first: int = 7):
    for s in range(0, len(x), size):
        rows = range(s, min(len(x), s + size))
        yield Chunk(x[s : s + size], np.asarray(rows) + first, [{"row": i, "label": f"c{i % 3}"} for i in rows])


@pytest.mark.parametrize("storage", ["ram", "ondisk"])
def test_chunked_build_equals_one_add(tmp_path, storage):
    x = clustered(12_000, 24)
    spec = "IVF32,Flat"
    built, spill = build_from_chunks(chunks_of(x, 2_500), 24, spec, tmp_path / "scratch", storage=storage)
    # the reference: the same training sample, every vector added in one call
    ref = EmbeddingIndex(24, spec)
    ref.train(spill.sample(100_000))
    ref.add(x, ids=np.arange(len(x)) + 7)
    for idx in (built, EmbeddingIndex.load(built.save(tmp_path / "saved"))):
        assert (idx.lists_path is not None) == (storage == "ondisk")
        assert np.array_equal(np.sort(idx.ids), np.arange(len(x)) + 7)
        idx.set_search_params(nprobe=32)
        ref.set_search_params(nprobe=32)
        q = clustered(50, 24, seed=1)
        d1, i1 = idx.search(q, 10)
        d2, i2 = ref.search(q, 10)
        assert np.array_equal(i1, i2) and np.allclose(d1, d2, atol=1e-6)
        assert idx.get_metadata(7) == {"row": 0, "label": "c0"} and idx.get_metadata(11_999 + 7)["row"] == 11_999
        assert idx.metadata_fields == ["label", "row"]
    assert not (tmp_path / "scratch" / "shards").exists()  # merged, then removed


def test_spill_refuses_bad_chunks_and_samples_every_chunk(tmp_path):
    spill = Spill(tmp_path / "s", 4)
    with pytest.raises(ValueError, match=r"expected \[N, 4\]"):
        spill.append(Chunk(np.zeros((3, 5)), np.arange(3)))
    spill.append(Chunk(np.zeros((3, 4)), np.arange(3)))
    with pytest.raises(ValueError, match="chunk ids must ascend past 2"):
        spill.append(Chunk(np.ones((2, 4)), np.array([2, 3])))
    for k in range(1, 10):
        spill.append(Chunk(np.full((100, 4), k, np.float32), np.arange(100) + 100 * k))
    spill.close()
    sample = spill.sample(200, seed=0)
    assert set(np.unique(sample[:, 0]).tolist()) >= set(range(1, 10))  # drawn from every chunk, not the first
    assert np.array_equal(sample, spill.sample(200, seed=0))
    assert np.array_equal(np.concatenate(list(spill.blocks(64)))[3:103], np.ones((100, 4)))


def test_build_needs_memory_for_a_chunk_not_for_every_vector(tmp_path):
    """4M x 32 float32 vectors (512 MB) built into an on-disk IVF index in a process whose data
    segment may grow by 200 MB only (RLIMIT_DATA: malloc'd and anonymous memory; the mapped files
    faiss writes through are shared mappings, outside it)."""
    script = f"""
import json, resource, sys
import faiss, pyarrow, pyarrow.ipc  # imported before the cap: their libraries' own data counts
import numpy as np
sys.path.insert(0, {str(REPO)!r})
from align.index import chunked
from align.index.chunked import Chunk, build_from_chunks
from align.index.embedding_index import EmbeddingIndex

def vm_data():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmData')).split()[1]) * 1024

chunked.SHARD_BYTES = 16 * 2**20
n, d, rows = 4_000_000, 32, 65_536
rng = np.random.default_rng(0)
centres = rng.standard_normal((64, d)).astype(np.float32)
# libraries allocate once on first use (BLAS work buffers, Arrow's thread pool: a crash, not a
# MemoryError, under the cap): a tiny build first, uncapped
warm = rng.standard_normal((5000, d)).astype(np.float32)
build_from_chunks([Chunk(warm, np.arange(5000))], d, "IVF16,Flat", {str(tmp_path / "warm")!r}, storage="ondisk")
limit = vm_data() + 200 * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
try:
    np.zeros(n * d, np.float32).sum()  # every vector at once: must not fit
    print(json.dumps({{"error": "the cap does not bite"}}))
    sys.exit(0)
except MemoryError:
    pass

def chunks():
    for s in range(0, n, rows):
        k = min(rows, n - s)
        x = centres[rng.integers(0, 64, k)] + 0.2 * rng.standard_normal((k, d)).astype(np.float32)
        yield Chunk(x, np.arange(s, s + k))

scratch = {str(tmp_path / "scratch")!r}
idx, spill = build_from_chunks(chunks(), d, "IVF256,Flat", scratch, storage="ondisk", train_rows=20_000)
folder = idx.save({str(tmp_path / "out")!r})
loaded = EmbeddingIndex.load(folder)
q = spill.rows(np.array([5, 3_999_999]))
loaded.set_search_params(nprobe=16)
_, got = loaded.search(q, 1)
result = {{"count": len(loaded), "top": got[:, 0].tolist(), "vector_bytes": n * d * 4, "cap": 200 * 2**20}}
print(json.dumps(result))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        # pyarrow's mimalloc reserves 1 GiB of address space, which RLIMIT_DATA counts (align/index/chunked.py)
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "ARROW_DEFAULT_MEMORY_POOL": "system"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))  # faiss prints too
    assert "error" not in result, result
    assert result["count"] == 4_000_000 and result["top"] == [5, 3_999_999]
    assert result["vector_bytes"] > result["cap"]
