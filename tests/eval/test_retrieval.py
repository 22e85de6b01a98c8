"""eval.retrieval against a loop-by-loop reference and against CLIP_benchmark's own code.

Embeddings with exact ties: each vector has 4 entries of ±0.5 (unit norm exactly), so every dot
product is a multiple of 1/4 and exact in any summation order; some images are exact duplicates.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from align.eval.retrieval import (
    clip_benchmark_names,
    positive_pairs,
    ranked_retrieval_metrics,
    retrieval_metrics,
    retrieval_metrics_from_scores,
)

KS = (1, 2, 5, 10)


def _quantised(rng: np.random.RandomState, n: int, d: int) -> np.ndarray:
    x = np.zeros((n, d), dtype=np.float32)
    for i in range(n):
        x[i, rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def make_case(kind: str, seed: int = 0):
    """(images [n_i, D], captions [n_t, D], image index of each caption); captions grouped by image."""
    rng = np.random.RandomState(seed)
    n_img = 40 if kind == "gaussian" else 50
    counts = rng.randint(1, 8, n_img) if kind == "uneven" else np.full(n_img, 5)
    img_of_txt = np.repeat(np.arange(n_img), counts)
    if kind == "gaussian":
        img = rng.randn(n_img, 24).astype(np.float32)
        txt = img[img_of_txt] + 2.0 * rng.randn(len(img_of_txt), 24).astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        return torch.from_numpy(img), torch.from_numpy(txt.astype(np.float32)), img_of_txt
    img = _quantised(rng, n_img, 12)
    img[5] = img[3]  # exact duplicate images: tied scores for every caption
    img[17] = img[40]
    txt = img[img_of_txt].copy()
    noisy = rng.rand(len(txt)) < 0.7
    txt[noisy] = _quantised(rng, int(noisy.sum()), 12)
    half = rng.rand(len(txt)) < 0.3  # some captions keep 2 of their image's 4 entries
    for j in np.flatnonzero(half):
        nz = np.flatnonzero(img[img_of_txt[j]])[:2]
        keep = np.zeros(12, np.float32)
        keep[nz] = img[img_of_txt[j], nz]
        rest = np.setdiff1d(np.arange(12), nz)
        keep[rng.choice(rest, 2, replace=False)] = rng.choice([-0.5, 0.5], 2)
        txt[j] = keep
    return torch.from_numpy(img), torch.from_numpy(txt), img_of_txt


def reference(scores: list[list[float]], positives: list[set[int]], ks, k_rule: str = "index") -> dict:
    """Plain loops. Rank order: higher score first, then lower gallery index. ``k_rule`` for R@k:
    'index', 'optimistic' (ties at the boundary count as hits) or 'pessimistic'."""
    firsts, aps, hits = [], [], {k: [] for k in ks}
    for q, row in enumerate(scores):
        if not positives[q]:
            continue
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        ranks = sorted(order.index(j) + 1 for j in positives[q])
        firsts.append(ranks[0])
        ap = 0.0
        for i, r in enumerate(ranks):
            ap += (i + 1) / r
        aps.append(ap / len(ranks))
        best = max(row[j] for j in positives[q])
        above = sum(1 for s in row if s > best)
        tied = sum(1 for s in row if s == best)
        for k in ks:
            if k_rule == "index":
                hits[k].append(ranks[0] <= k)
            elif k_rule == "optimistic":
                hits[k].append(above < k)
            else:
                hits[k].append(above + tied <= k)
    out = {f"R@{k}": sum(hits[k]) / len(firsts) for k in ks}
    out.update(
        {
            "mAP": sum(aps) / len(aps),
            "MRR": sum(1 / r for r in firsts) / len(firsts),
            "median_rank": float(statistics.median(firsts)),
            "mean_rank": sum(firsts) / len(firsts),
            "n_queries": len(firsts),
        }
    )
    return out


def both_references(img, txt, img_of_txt, ks, k_rule="index"):
    s_ti = (txt @ img.T).tolist()
    s_it = (img @ txt.T).tolist()
    caps = [set() for _ in range(len(img))]
    for j, i in enumerate(img_of_txt):
        caps[i].add(j)
    return {
        "text_to_image": reference(s_ti, [{int(i)} for i in img_of_txt], ks, k_rule),
        "image_to_text": reference(s_it, caps, ks, k_rule),
    }


def check_equal(ours: dict, ref: dict, recall_only: bool = False) -> None:
    for direction, vals in ref.items():
        for name, v in vals.items():
            if recall_only and not name.startswith("R@"):
                continue
            got = ours[f"{direction}/{name}"]
            if name in ("mAP", "MRR"):  # same operations; only the order of the final mean's sum differs
                assert got == pytest.approx(v, rel=1e-12, abs=0), (direction, name)
            else:
                assert got == v, (direction, name, got, v)


@pytest.mark.parametrize("kind", ["ties5", "uneven", "gaussian"])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_matches_loop_reference(kind, chunk):
    img, txt, img_of_txt = make_case(kind)
    ours = retrieval_metrics(img, txt, img_of_txt, ks=KS, chunk_size=chunk)
    check_equal(ours, both_references(img, txt, img_of_txt, KS))
    assert ours["text_to_image/n_queries"] == len(txt) and ours["image_to_text/n_queries"] == len(img)


def test_positive_forms_and_score_matrix_agree():
    img, txt, img_of_txt = make_case("uneven", seed=3)
    mat = np.zeros((len(img), len(txt)), dtype=bool)
    mat[img_of_txt, np.arange(len(txt))] = True
    pairs = [(int(i), j) for j, i in enumerate(img_of_txt)]
    base = retrieval_metrics(img, txt, img_of_txt, ks=KS)
    assert retrieval_metrics(img, txt, mat, ks=KS) == base
    assert retrieval_metrics(img, txt, torch.from_numpy(mat), ks=KS) == base
    assert retrieval_metrics(img, txt, pairs, ks=KS) == base
    assert retrieval_metrics_from_scores((img @ txt.T).numpy(), pairs, ks=KS, chunk_size=5) == base
    a, b, n_a, n_b = positive_pairs(pairs + pairs)  # duplicates collapse
    assert len(a) == len(txt) and (n_a, n_b) == (len(img), len(txt))


def test_queries_without_positives_are_skipped_and_counted():
    img, txt, img_of_txt = make_case("ties5", seed=1)
    extra = torch.cat([img, img[:3]])  # 3 distractor images with no caption
    ours = retrieval_metrics(extra, txt, img_of_txt, ks=KS)
    assert ours["image_to_text/n_queries_without_positives"] == 3
    assert ours["image_to_text/n_queries"] == len(img)


@pytest.mark.parametrize("kind", ["ties5", "uneven", "gaussian"])
def test_ranked_ids_equal_dense(kind):
    img, txt, img_of_txt = make_case(kind, seed=2)
    dense = retrieval_metrics(img, txt, img_of_txt, ks=KS)
    t2i_pairs = np.stack([np.arange(len(txt)), img_of_txt], 1)
    for prefix, q, g, pos in (("text_to_image", txt, img, t2i_pairs), ("image_to_text", img, txt, img_of_txt)):
        order = torch.sort(q @ g.T, dim=1, descending=True, stable=True)[1]  # the index tie rule
        for K in (5, 10):
            got, why = ranked_retrieval_metrics(order[:, :K], pos, len(g), ks=KS, prefix=prefix)
            for k in KS:
                assert got[f"{prefix}/R@{k}"] == (dense[f"{prefix}/R@{k}"] if k <= K else None)
            assert got[f"{prefix}/mAP"] is None and "full ranking" in why[f"{prefix}/mAP"]
            med = got[f"{prefix}/median_rank"]
            assert med is None or med == dense[f"{prefix}/median_rank"]
        got, why = ranked_retrieval_metrics(order, pos, len(g), ks=KS, prefix=prefix)  # K = all
        assert not why
        for m in ("mAP", "MRR", "median_rank", "mean_rank"):
            assert got[f"{prefix}/{m}"] == pytest.approx(dense[f"{prefix}/{m}"], rel=1e-12)
    got, why = ranked_retrieval_metrics(order[:, :3], img_of_txt, len(txt), ks=(1, 5))
    assert got["image_to_text/R@5"] is None and "K=3" in why["image_to_text/R@5"]


def test_ranked_ids_from_faiss():
    faiss = pytest.importorskip("faiss")
    img, txt, img_of_txt = make_case("gaussian", seed=4)  # no exact ties: FAISS order is unambiguous
    dense = retrieval_metrics(img, txt, img_of_txt, ks=KS)
    index = faiss.IndexFlatIP(img.shape[1])
    index.add(txt.numpy())
    _, ids = index.search(img.numpy(), 10)
    got, _ = ranked_retrieval_metrics(ids, img_of_txt, len(txt), ks=KS)
    for k in KS:
        assert got[f"image_to_text/R@{k}"] == dense[f"image_to_text/R@{k}"]


# --- CLIP_benchmark (in the test extra: pip install -e ".[test]") ---------------------------


def _cb_evaluate(img, txt, img_of_txt, ks, batch_size=8):
    """CLIP_benchmark's zeroshot_retrieval.evaluate on a fake model that returns fixed embeddings."""
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

    class FakeModel:
        def encode_image(self, ids):
            return img[ids]

        def encode_text(self, ids):
            return txt[ids]

    samples = [(i, [str(j) for j in np.flatnonzero(img_of_txt == i)]) for i in range(len(img))]
    loader = torch.utils.data.DataLoader(
        samples,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=lambda b: (torch.tensor([s[0] for s in b]), [s[1] for s in b]),
    )
    tokenizer = lambda texts: torch.tensor([int(t) for t in texts])
    return zr.evaluate(FakeModel(), loader, tokenizer, "cpu", amp=False, recall_k_list=list(ks))


def _same_counts(ours: float, theirs: float, n: int) -> None:
    """CLIP_benchmark averages in float32: compare the hit counts, which must be identical."""
    assert round(ours * n) == round(theirs * n) and ours == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("kind", ["ties5", "uneven", "gaussian"])
def test_matches_clip_benchmark_evaluate(kind):
    img, txt, img_of_txt = make_case(kind, seed=5)
    theirs = _cb_evaluate(img, txt, img_of_txt, KS)
    topk = clip_benchmark_names(retrieval_metrics(img, txt, img_of_txt, ks=KS, ties="topk", chunk_size=8))
    assert set(topk) == set(theirs)
    index = retrieval_metrics(img, txt, img_of_txt, ks=KS)
    opt = both_references(img, txt, img_of_txt, KS, "optimistic")
    pes = both_references(img, txt, img_of_txt, KS, "pessimistic")
    for k in KS:
        for cb_name, d, n in (
            (f"image_retrieval_recall@{k}", "text_to_image", len(txt)),
            (f"text_retrieval_recall@{k}", "image_to_text", len(img)),
        ):
            _same_counts(topk[cb_name], theirs[cb_name], n)
            # index tie rule: same as CLIP_benchmark without ties; with ties both lie between the bounds
            assert pes[d][f"R@{k}"] <= index[f"{d}/R@{k}"] <= opt[d][f"R@{k}"]
            assert pes[d][f"R@{k}"] - 1e-6 <= theirs[cb_name] <= opt[d][f"R@{k}"] + 1e-6
            if kind == "gaussian":
                _same_counts(index[f"{d}/R@{k}"], theirs[cb_name], n)


def test_matches_clip_benchmark_recall_at_k_directly():
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    img, txt, img_of_txt = make_case("uneven", seed=6)
    scores = txt @ img.T
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(txt)), torch.from_numpy(img_of_txt)] = True
    ours = retrieval_metrics_from_scores(scores.T, img_of_txt, ks=KS, ties="topk", chunk_size=16)
    for k in KS:
        t2i = (zr.batchify(zr.recall_at_k, scores, pos, 16, "cpu", k=k) > 0).float().mean().item()
        i2t = (zr.batchify(zr.recall_at_k, scores.T, pos.T, 16, "cpu", k=k) > 0).float().mean().item()
        _same_counts(ours[f"text_to_image/R@{k}"], t2i, len(txt))
        _same_counts(ours[f"image_to_text/R@{k}"], i2t, len(img))
