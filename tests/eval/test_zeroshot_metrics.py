"""eval.zeroshot_metrics against loops, scikit-learn and CLIP_benchmark's zeroshot_classification."""

from __future__ import annotations

import builtins
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align.eval.zeroshot_metrics import (
    build_class_embeddings,
    class_prompts,
    load_templates,
    zeroshot_classification_metrics,
)


def make_logits(n: int, c: int, ties: bool, seed: int = 0):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, c, n)
    if ties:  # quarter steps: many exact ties, including with the true class
        logits = rng.randint(0, 5, (n, c)).astype(np.float32) / 4
        logits[np.arange(n), labels] += (rng.rand(n) < 0.3) * 0.25
    else:
        logits = rng.randn(n, c).astype(np.float32)
        logits[np.arange(n), labels] += 1.0
    return torch.from_numpy(logits), torch.from_numpy(labels)


def ref_topk(logits, labels, k):
    """Loop reference: order classes by (-score, index); hit when the label is in the first k."""
    hits = 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hits += y in order[:k]
    return hits / len(labels)


@pytest.mark.parametrize("ties", [True, False])
def test_topk_matches_loop_reference(ties):
    logits, labels = make_logits(300, 10, ties)
    m = zeroshot_classification_metrics(logits, labels, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert m[f"top{k}"] == ref_topk(logits, labels, k)
    assert m["undefined"] == {}


def test_top5_undefined_below_five_classes():
    logits, labels = make_logits(50, 4, ties=False)
    m = zeroshot_classification_metrics(logits, labels)
    assert m["top5"] is None and "4 classes" in m["undefined"]["top5"]
    assert m["top1"] is not None
    m5 = zeroshot_classification_metrics(*make_logits(50, 5, ties=False))
    assert m5["top5"] == 1.0  # defined (and trivially 1) with exactly 5 classes, as in CLIP_benchmark


@pytest.mark.parametrize("ties", [True, False])
def test_balanced_accuracy_and_confusion_match_sklearn(ties):
    skm = pytest.importorskip("sklearn.metrics")
    logits, labels = make_logits(200, 8, ties, seed=1)
    labels[labels == 3] = 4  # class 3 absent from the labels (but may be predicted)
    m = zeroshot_classification_metrics(logits, labels)
    pred = logits.argmax(1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted-but-absent classes
        assert m["mean_per_class_recall"] == pytest.approx(skm.balanced_accuracy_score(labels.numpy(), pred), rel=1e-12)
    assert m["n_classes_present"] == 7 and m["per_class_recall"][3] is None
    np.testing.assert_array_equal(
        np.array(m["confusion_matrix"]), skm.confusion_matrix(labels.numpy(), pred, labels=np.arange(8))
    )


def test_bad_inputs():
    logits, labels = make_logits(10, 6, ties=False)
    with pytest.raises(ValueError, match="labels must lie"):
        zeroshot_classification_metrics(logits, labels + 6)
    with pytest.raises(ValueError, match="class names"):
        zeroshot_classification_metrics(logits, labels, classnames=["a", "b"])


@pytest.mark.parametrize("ties", [True, False])
def test_accuracy_matches_clip_benchmark(ties, zc):
    logits, labels = make_logits(300, 10, ties, seed=2)
    acc1, acc5 = zc.accuracy(logits, labels, topk=(1, 5))
    topk = zeroshot_classification_metrics(logits, labels, ties="topk")
    assert (topk["top1"], topk["top5"]) == (acc1, acc5)
    index = zeroshot_classification_metrics(logits, labels)
    if not ties:
        assert (index["top1"], index["top5"]) == (acc1, acc5)


@pytest.fixture
def zc(monkeypatch):
    """CLIP_benchmark's zeroshot_classification module. Its ``accuracy`` (v1.6.2) calls ``float`` on a
    1-element 1-D array, which NumPy >= 2.4 refuses; give that module a ``float`` that accepts it
    (same value), so the function under comparison is otherwise exactly theirs."""
    mod = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    monkeypatch.setattr(mod, "float", lambda x=0.0: builtins.float(np.asarray(x).reshape(())), raising=False)
    return mod


# --- class-prompt embeddings --------------------------------------------------------------------


class FakeText:
    """Deterministic 'text encoder': a fixed random (unnormalised) vector per distinct string."""

    def __init__(self, d: int = 16):
        self.d, self.table, self.vocab = d, [], {}
        self.gen = torch.Generator().manual_seed(0)

    def ids(self, texts):
        for t in texts:
            if t not in self.vocab:
                self.vocab[t] = len(self.table)
                self.table.append(3 * torch.randn(self.d, generator=self.gen))
        return torch.tensor([self.vocab[t] for t in texts])

    def encode_texts(self, texts):
        ids = self.ids(texts)
        return torch.stack(self.table)[ids]

    def encode_text(self, ids):  # CLIP_benchmark's model API (after its tokenizer)
        return torch.stack(self.table)[ids]


CLASSES = ["cat", "dog", "red car", "tree"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}.", "itap of the {c}."]
CUPL = {
    "cat": ["a small furry cat", "a cat sleeping"],
    "dog": ["a dog barking"],
    "red car": ["a red car on a road", "a shiny red car", "a red sports car"],
    "tree": ["a tall tree"],
}


@pytest.mark.parametrize("templates", [TEMPLATES, CUPL])
def test_class_embeddings_match_manual_and_clip_benchmark(templates):
    enc = FakeText()
    ours = build_class_embeddings(CLASSES, templates, enc.encode_texts, batch_size=2)
    for c, name in enumerate(CLASSES):
        prompts = templates[name] if isinstance(templates, dict) else [t.replace("{c}", name) for t in templates]
        manual = F.normalize(F.normalize(enc.encode_texts(prompts), dim=-1).mean(0), dim=-1)
        torch.testing.assert_close(ours[c], manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(CLASSES)))
    assert torch.equal(ours, build_class_embeddings(CLASSES, templates, enc.encode_texts, batch_size=1000))
    zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    theirs = zc.zero_shot_classifier(enc, enc.ids, CLASSES, templates, "cpu", amp=False)  # [D, C]
    torch.testing.assert_close(ours, theirs.T, rtol=0, atol=1e-6)


def test_positional_and_named_placeholders_agree():
    assert class_prompts(["cat"], ["a {} photo"]) == class_prompts(["cat"], ["a {c} photo"]) == [["a cat photo"]]
    with pytest.raises(ValueError, match="template 'a {name}'"):
        class_prompts(["cat"], ["a {name}"])


def test_duplicate_and_missing_classes_named():
    with pytest.raises(ValueError, match=r"duplicated: \['cat', 'dog'\]"):
        class_prompts(["cat", "dog", "cat", "bird", "dog"], TEMPLATES)
    with pytest.raises(ValueError, match=r"missing for classes: \['bird'\]"):
        class_prompts(["cat", "bird"], CUPL)
    with pytest.raises(ValueError, match="no prompts"):
        class_prompts(["cat"], {"cat": []})


def test_load_templates(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {c}.\n\n  a drawing of a {c}. \n")
    assert load_templates(tmp_path / "t.txt") == ["a photo of a {c}.", "a drawing of a {c}."]
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATES))
    assert load_templates(tmp_path / "t.json") == TEMPLATES
    (tmp_path / "cupl.json").write_text(json.dumps(CUPL))
    assert load_templates(tmp_path / "cupl.json") == CUPL
    (tmp_path / "bad.json").write_text(json.dumps({"cat": "one string"}))
    with pytest.raises(ValueError, match="bad.json"):
        load_templates(tmp_path / "bad.json")


def test_end_to_end_against_clip_benchmark_evaluate(zc):
    """CLIP_benchmark's full zero-shot evaluate (fake model + DataLoader) vs our pieces."""
    classes = [f"class {i}" for i in range(7)]
    enc = FakeText(d=16)
    cls_emb = build_class_embeddings(classes, TEMPLATES, enc.encode_texts)
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (120,), generator=gen)
    images = cls_emb[labels] + 0.35 * torch.randn(120, 16, generator=gen)

    class Model(FakeText):
        def encode_image(self, ids):
            return images[ids]

    model = Model(d=16)
    model.table, model.vocab, model.gen = enc.table, enc.vocab, enc.gen

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.classes = classes

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return i, labels[i]

    loader = torch.utils.data.DataLoader(DS(), batch_size=32)
    theirs = zc.evaluate(model, loader, model.ids, classes, TEMPLATES, "cpu", amp=False)
    ours = zeroshot_classification_metrics(F.normalize(images, dim=-1) @ cls_emb.T, labels)
    assert 0.2 < ours["top1"] < 1.0
    assert ours["top1"] == theirs["acc1"] and ours["top5"] == theirs["acc5"]
    assert ours["mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], rel=1e-12)
