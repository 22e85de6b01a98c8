"""align.index.embedding_index: FAISS index types against numpy brute force, save/load integrity, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from align.index.embedding_index import EmbeddingIndex
from align.index.files import IndexFormatError
from align.io.manifest import file_entries
from tests.support.index_files import read_records, write_records


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int, centers: int = 50, seed: int = 0) -> np.ndarray:
    """Gaussian mixture on the sphere: closer to real embeddings than uniform vectors."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(q: np.ndarray, g: np.ndarray, k: int):
    s = q @ g.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


@pytest.fixture(scope="module")
def data():
    g, q = clustered(4000, 32, seed=1), clustered(200, 32, seed=2)
    _, exact = brute_force(q, g, 10)
    return g, q, exact


def test_flat_matches_numpy_brute_force():
    g, q = unit(1000, 48, 1), unit(50, 48, 2)
    index = EmbeddingIndex(48)
    index.add(g)
    scores, ids = index.search(q, 10)
    ref_scores, ref_ids = brute_force(q, g, 10)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # ids equal except where two gallery items tie to float precision
    mismatch = ids != ref_ids
    assert np.allclose(scores[mismatch], ref_scores[mismatch], atol=1e-5)
    assert mismatch.mean() < 0.01


def test_old_api_torch_inputs_and_k_cap():
    g = torch.nn.functional.normalize(torch.randn(20, 16), dim=1)
    index = EmbeddingIndex(16)
    index.add(g)
    index.add(g[:5].numpy(), ids=[100, 101, 102, 103, 104])
    assert len(index) == 25
    scores, ids = index.search(g[:3], 50)
    assert scores.shape == ids.shape == (3, 25)
    assert ids[:, 0].tolist() in ([0, 1, 2], [100, 101, 102])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert EmbeddingIndex(16).search(g[:2], 5)[1].shape == (2, 0)  # empty index


@pytest.mark.parametrize(
    "spec,params,bound",
    [
        ("HNSW32", {"efSearch": 128}, 0.9),
        ("IVF64,Flat", {"nprobe": 32}, 0.9),
    ],
)
def test_ann_recall(data, spec, params, bound):
    g, q, exact = data
    index = EmbeddingIndex(32, spec)
    index.add(g)  # IVF trains on this first batch
    index.set_search_params(**params)
    assert index.nprobe == params.get("nprobe", index.nprobe)
    _, ids = index.search(q, 10)
    assert recall(ids, exact) > bound


def test_ivf_pq_explicit_train_and_untrained_errors(data):
    g, q, exact = data
    index = EmbeddingIndex(32, "IVF16,PQ8", auto_train=False)
    with pytest.raises(RuntimeError, match="not trained"):
        index.search(q, 5)
    with pytest.raises(RuntimeError, match="not trained"):
        index.add(g)
    index.train(g)
    with pytest.raises(RuntimeError, match="already trained"):
        index.train(g)
    index.add(g)
    index.set_search_params(nprobe=16)
    _, ids = index.search(q, 10)
    assert ids.shape == (200, 10) and recall(ids, exact) > 0.3
    with pytest.raises(ValueError, match="efSearch applies to HNSW"):
        index.set_search_params(efSearch=10)
    with pytest.raises(ValueError, match="training index 'IVF64,Flat' on 10 vectors failed"):
        EmbeddingIndex(32, "IVF64,Flat").add(g[:10])


def test_bad_inputs():
    index = EmbeddingIndex(8)
    with pytest.raises(ValueError, match=r"\[N, 8\], got \(4, 7\)"):
        index.add(np.ones((4, 7)))
    with pytest.raises(ValueError, match=r"\[N, 8\], got \(8,\)"):
        index.add(np.ones(8))
    x = unit(5, 8)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="row 3 contains NaN"):
        index.add(x)
    index.add(unit(5, 8))
    with pytest.raises(ValueError, match=r"queries must have shape \[N, 8\], got \(2, 9\)"):
        index.search(np.ones((2, 9)), 3)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(unit(2, 8), ids=[4, 9])
    with pytest.raises(ValueError, match="metadata"):
        index.add(unit(2, 8), metadata=[{"a": 1}])
    with pytest.raises(ValueError, match="unknown|cannot build"):
        EmbeddingIndex(8, "NoSuchIndex42")


def make_index(tmp_path, spec="Flat"):
    g = clustered(600, 16, centers=10, seed=3)
    index = EmbeddingIndex(16, spec, model="toy-model@step-100", modality="image")
    meta = [{"path": f"img/{i}.png", "label": int(i % 7), "caption": f"item {i} ü"} for i in range(600)]
    index.add(g, ids=np.arange(600) * 3 + 5, metadata=meta)
    folder = index.save(tmp_path / "idx")
    return index, folder, g


@pytest.mark.parametrize("spec", ["Flat", "HNSW32", "IVF8,Flat"])
def test_save_load_round_trip(tmp_path, spec):
    index, folder, g = make_index(tmp_path, spec)
    if spec.startswith("IVF"):
        index.set_search_params(nprobe=3)
        index.save(folder, overwrite=True)
    q = g[:20] + 0.01
    loaded = EmbeddingIndex.load(folder, expect_dim=16, expect_model="toy-model@step-100")
    assert (len(loaded), loaded.spec, loaded.model, loaded.modality, loaded.nprobe) == (
        600,
        spec,
        "toy-model@step-100",
        "image",
        index.nprobe,
    )
    for a, b in zip(index.search(q, 7), loaded.search(q, 7)):
        np.testing.assert_array_equal(a, b)
    assert index.search_with_metadata(q, 3) == loaded.search_with_metadata(q, 3)
    hit = loaded.search_with_metadata(g[:1], 1)[0][0]
    assert hit[1] == 5 and hit[2] == {"path": "img/0.png", "label": 0, "caption": "item 0 ü"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 600 and manifest["dim"] == 16 and len(manifest["index_sha256"]) == 64
    assert [r["id"] for r in read_records(folder)] == list(range(5, 1805, 3))


def test_refuses_to_overwrite(tmp_path):
    index, folder, _ = make_index(tmp_path)
    before = (folder / "index.faiss").read_bytes()
    index.add(unit(1, 16))
    with pytest.raises(FileExistsError, match="not empty"):
        index.save(folder)
    assert (folder / "index.faiss").read_bytes() == before
    index.save(folder, overwrite=True)
    assert len(EmbeddingIndex.load(folder)) == 601
    # no temp folders left behind; the save lock file stays by design (align/index/embedding_index.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "idx.lock"]
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")  # an existing empty folder is fine


def test_expect_mismatch(tmp_path):
    _, folder, _ = make_index(tmp_path)
    with pytest.raises(IndexFormatError, match="different embedding dim or model"):
        EmbeddingIndex.load(folder, expect_dim=32)
    with pytest.raises(IndexFormatError, match="different embedding dim or model"):
        EmbeddingIndex.load(folder, expect_model="other-model")
    with pytest.raises(IndexFormatError, match="expected 'text'"):
        EmbeddingIndex.load(folder, expect_modality="text")


def test_tampering_is_detected(tmp_path):
    _, folder, _ = make_index(tmp_path)
    meta = folder / "metadata.arrow"
    original, records, man = meta.read_bytes(), read_records(folder), folder / "manifest.json"
    manifest = man.read_text()

    def forged(rows):  # metadata.arrow rewritten and the manifest's entry for it recomputed
        write_records(folder, rows)
        m = json.loads(manifest)
        man.write_text(json.dumps({**m, "files": {**m["files"], **file_entries(folder, ["metadata.arrow"])}}))

    forged(records[:-1])
    with pytest.raises(IndexFormatError, match=r"idx: metadata.arrow has 599 records but .* count is 600"):
        EmbeddingIndex.load(folder)
    forged([{**records[0], "id": 4}] + records[1:])
    with pytest.raises(IndexFormatError, match="ids in metadata.arrow do not match"):
        EmbeddingIndex.load(folder)
    meta.write_bytes(original)
    man.write_text(manifest)

    man = folder / "manifest.json"
    m = json.loads(man.read_text())
    man.write_text(json.dumps({**m, "dim": 32}))
    with pytest.raises(IndexFormatError, match="manifest says dim 32 but index.faiss has dim 16"):
        EmbeddingIndex.load(folder)
    man.write_text(json.dumps({**m, "count": 601}))
    with pytest.raises(IndexFormatError, match="manifest says count 601"):
        EmbeddingIndex.load(folder)
    man.write_text(json.dumps(m))

    blob = bytearray((folder / "index.faiss").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (folder / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match="sha256 .* does not match manifest"):
        EmbeddingIndex.load(folder)
    (folder / "index.faiss").unlink()
    with pytest.raises(IndexFormatError, match="missing index.faiss"):
        EmbeddingIndex.load(folder)
