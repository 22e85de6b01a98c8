"""``align.serve.Searcher`` on a tiny image<->text model trained 150 steps on scikit-learn's real digits,
with image indexes of the digits test split (360 items: Flat, IVF, PQ). The main correctness check is
parity: a search returns exactly what ``align query`` (``query_index``) returns for the same query,
and ``encode`` / ``classify`` exactly what ``align.encode`` and the eval zero-shot classifier give."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from align.data.sources.common import DIGIT_NAMES
from align.serve import Searcher, SearchError, Upload
from tests.support.tiny import DIGITS_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "{source: sklearn-digits, split: test, columns: {image: image, text: caption}, label_column: label}"


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_thread) -> dict:
    """A trained checkpoint, three index folders of the test split, and one Searcher over them."""
    from align.app.trainer import train
    from align.config.schema import config_from_dict
    from align.index.build import build_index, parse_data_spec

    out = tmp_path_factory.mktemp("serve")
    train_spec = {
        "source": "sklearn-digits",
        "split": "train",
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    }
    cfg = {
        "output_dir": str(out / "run"),
        "seed": 0,
        "model": copy.deepcopy(DIGITS_MODEL),
        "data": {"train": train_spec, "num_workers": 0},
        "train": {"batch_size": 64, "steps": 150, "lr": 2e-3, "warmup_steps": 5, "progress": False},
    }
    train(config_from_dict(cfg))
    folders = {}
    for name, spec in (("digits", "Flat"), ("ivf", "IVF4,Flat"), ("pq", "PQ8x4")):
        index = build_index(out / "run", parse_data_spec(DATA), "image", index_spec=spec, progress=False)
        if name == "ivf":
            index.set_search_params(nprobe=4)  # every list: exact, so a filter must find k
        folders[name] = index.save(out / name)
    return {"run": out / "run", "folders": folders, "searcher": Searcher(out / "run", folders), "tmp": out}


def as_tuples(hits) -> list[tuple[float, int, dict]]:
    return [(h.score, h.id, h.metadata) for h in hits]


def test_text_search_equals_align_query_and_has_learned(served):
    from align.index.build import query_index

    searcher, folder = served["searcher"], served["folders"]["digits"]
    queries = [f"the digit {n}." for n in DIGIT_NAMES]
    for query in (queries[7], "a photo of the number three.", "something else entirely"):
        (hits,) = searcher.search("text", [query], k=10, index="digits")
        assert as_tuples(hits) == query_index(folder, "text", query, k=10)  # identical ids, scores, metadata
        assert [h.rank for h in hits] == list(range(1, 11)) and {h.index for h in hits} == {"digits"}
    top5 = searcher.search("text", queries, k=5, index="digits")
    precision = [sum(h.metadata["label"] == name for h in hits) / 5 for name, hits in zip(DIGIT_NAMES, top5)]
    assert sum(precision) / 10 >= 0.4, precision  # chance is 0.1
    assert precision[7] >= 0.6, top5[7]  # "the digit seven.": mostly sevens


def test_a_batch_equals_its_single_queries(served):
    searcher = served["searcher"]
    queries = ["the digit two.", "a handwritten nine.", "a photo of the number five."]
    batch = searcher.search("text", queries, k=7, index="digits")
    for query, hits in zip(queries, batch):
        (single,) = searcher.search("text", [query], k=7, index="digits")
        assert [h.id for h in hits] == [h.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], rtol=0, atol=1e-6)


@pytest.mark.parametrize("index", ["digits", "ivf", "pq"])
def test_filters_return_k_matching_hits_in_the_unfiltered_order(served, index):
    """IDSelector on Flat and IVF; PQ takes no search parameters, so its hits come from over-fetching."""
    searcher = served["searcher"]
    (everything,) = searcher.search("text", ["the digit eight."], k=360, index=index)
    for filters in ({"label": "three"}, {"label": ["three", "eight"]}):
        allowed = filters["label"] if isinstance(filters["label"], list) else [filters["label"]]
        (hits,) = searcher.search("text", ["the digit eight."], k=6, filters=filters, index=index)
        expected = [h for h in everything if h.metadata["label"] in allowed][:6]
        assert len(hits) == 6 and all(h.metadata["label"] in allowed for h in hits)
        assert [h.id for h in hits] == [h.id for h in expected]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=1e-5)
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    # fewer items match than k: all of them; fields combine with AND
    (few,) = searcher.search("text", ["seven"], k=50, filters={"row": [3, 4, 5], "label": "three"}, index=index)
    assert sorted(h.id for h in few) == sorted(r for r in (3, 4, 5) if everything_label(everything, r) == "three")
    assert searcher.search("text", ["x", "y"], k=5, filters={"label": "three", "row": 10**6}, index=index) == [[], []]
    assert searcher._indexes[index]._selector_ok is (index != "pq")  # which path answered


def everything_label(hits, row: int) -> str:
    return next(h.metadata["label"] for h in hits if h.id == row)


def test_filter_errors_name_the_fields(served):
    searcher = served["searcher"]
    fields = r"no metadata field\(s\) \['colour'\]; its fields are \['caption', 'label', 'row'\]"
    with pytest.raises(SearchError, match=fields):
        searcher.search("text", ["seven"], k=3, filters={"colour": "red"}, index="digits")
    with pytest.raises(SearchError, match=r"filter 'label': 3 matches no item .* values are string \(e\.g\. \['"):
        searcher.search("text", ["seven"], k=3, filters={"label": 3}, index="digits")  # labels are stored by name
    with pytest.raises(SearchError, match=r"empty list of allowed values"):
        searcher.search("text", ["seven"], k=3, filters={"label": []}, index="digits")


def digit_png(tmp: Path) -> tuple[Path, bytes]:
    from align.data.sources.sklearn_digits import sklearn_digits

    buf = io.BytesIO()
    sklearn_digits("test")[0]["image"].save(buf, format="PNG")
    path = tmp / "digit.png"
    path.write_bytes(buf.getvalue())
    return path, buf.getvalue()


def test_image_query_by_bytes_equals_by_path(served):
    searcher = served["searcher"]
    path, data = digit_png(served["tmp"])
    by_path, by_bytes, by_upload, by_str = searcher.search(
        "image", [path, data, Upload(data, "digit.png"), str(path)], k=5, index="digits"
    )
    assert as_tuples(by_bytes) == as_tuples(by_path) == as_tuples(by_upload) == as_tuples(by_str)
    assert by_path[0].id == 0 and by_path[0].score == pytest.approx(1.0, abs=1e-5)  # test row 0 finds itself


def test_encode_is_unit_norm_and_equals_align_encode(served):
    import align

    searcher = served["searcher"]
    texts = ["the digit four.", "a handwritten one."]
    emb = searcher.encode("text", texts)
    assert emb.dtype == np.float32 and emb.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(emb, align.encode(searcher.model, "text", texts).numpy())
    path, _ = digit_png(served["tmp"])
    assert np.array_equal(searcher.encode("image", [path]), align.encode(searcher.model, "image", [path]).numpy())


def test_classify_equals_the_eval_zeroshot_classifier(served):
    from align.eval.zeroshot import build_classifier, classify

    searcher = served["searcher"]
    path, _ = digit_png(served["tmp"])
    templates = ["a photo of the number {}.", "the digit {}."]
    result = searcher.classify(path, DIGIT_NAMES, templates, modality="image")
    assert sorted(c for c, _ in result) == sorted(DIGIT_NAMES) and sum(p for _, p in result) == pytest.approx(1.0)
    assert [p for _, p in result] == sorted((p for _, p in result), reverse=True)
    model = searcher.model
    with torch.no_grad():
        classifier = build_classifier(model, DIGIT_NAMES, templates, "text")
        logits = model.logit_scale.exp() * classify(torch.from_numpy(searcher.encode("image", [path])), classifier)
        expected = dict(zip(DIGIT_NAMES, logits.softmax(-1)[0].tolist()))
    assert {c: p for c, p in result} == pytest.approx(expected, abs=1e-6)
    builds = searcher._classifiers.builds
    assert searcher.classify(path, DIGIT_NAMES, list(templates), modality="image") == result
    assert searcher._classifiers.builds == builds  # the class embeddings came from the cache
    shipped = searcher.classify(path, DIGIT_NAMES, "digits", modality="image")  # a shipped template set
    assert shipped[0][0] in DIGIT_NAMES


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.search("audio", ["x"], k=3, index="digits"), r"no modality 'audio'; it has \['image', 'text'\]"),
        (lambda s: s.search("text", ["x"], k=3, index="nope"), r"no index named 'nope' is loaded; loaded: \['digits'"),
        (lambda s: s.search("text", ["x"], k=3), r"3 indexes are loaded; pass index= one of \['digits', 'ivf', 'pq'\]"),
        (lambda s: s.search("text", ["x"], k=0, index="digits"), r"k must be at least 1, got 0"),
        (lambda s: s.search("text", ["x"], k=10**9, index="digits"), r"k=1000000000 is more than max_k=1000"),
        (lambda s: s.search("text", ["x"], k="5", index="digits"), r"k must be an integer, got str"),
        (lambda s: s.search("text", [], k=3, index="digits"), r"empty batch: no text items"),
        (lambda s: s.search("text", "seven", k=3, index="digits"), r"got str; wrap one item in a list"),
        (lambda s: s.search("text", ["ok", "   "], k=3, index="digits"), r"text item 1 .*empty or whitespace"),
        (lambda s: s.search("text", ["x" * 5000], k=3, index="digits"), r"text item 0 is a string of 5000 char"),
        (lambda s: s.search("image", [b"not an image"], k=3, index="digits"), r"image item 0 .*cannot decode image"),
        (lambda s: s.encode("text", ["ok"] * 300), r"batch of 300 text items; at most 256"),
        (lambda s: s.classify("x", ["a", "a"], ["{}"], modality="text"), r"class names must be unique"),
        (lambda s: s.classify("x", ["a", "b"], ["no slot"], modality="text"), r"'no slot' has no '\{\}'"),
        (lambda s: s.classify("x", ["a", "b"], ["{x}"], modality="text"), r"zero-shot prompts: template '\{x\}'"),
        (lambda s: s.classify("x", ["a"], ["{}"], modality="text"), r"at least 2 class names"),
        (lambda s: s.classify("x", ["a", "b"], ["{}"], modality="graph"), r"no modality 'graph'"),
        (lambda s: s.classify("x", ["a", "b"], "nope", modality="text"), r"no shipped template set"),
    ],
)
def test_bad_requests_raise_search_error(served, call, message):
    with pytest.raises(SearchError, match=message):
        call(served["searcher"])


def test_an_undecodable_item_is_named_by_its_position(served):
    path, data = digit_png(served["tmp"])
    with pytest.raises(SearchError, match=r"image item 2 "):
        served["searcher"].search("image", [path, data, data[:40]], k=3, index="digits")


def test_loads_once_reports_what_it_holds_and_refuses_another_models_index(served, monkeypatch):
    import align.serve.searcher as module
    from align.index.build import IndexBuildError

    calls = []
    real = module.load_model
    monkeypatch.setattr(module, "load_model", lambda path: calls.append(path) or real(path))  # counts only
    searcher = Searcher(served["run"], {"digits": served["folders"]["digits"]})
    for _ in range(3):
        searcher.search("text", ["the digit one."], k=2)  # the one loaded index is the default
        searcher.encode("image", [digit_png(served["tmp"])[0]])
    searcher.classify("the digit one.", DIGIT_NAMES, ["{}"], modality="text")
    assert len(calls) == 1
    assert searcher.modalities == ["image", "text"]
    info = searcher.indexes["digits"]
    assert (info.modality, info.size, info.dim, info.spec) == ("image", 360, 32, "Flat")
    assert info.fields == ("caption", "label", "row")

    # a valid checkpoint of another model (its weights differ) is refused by the index, as align query does
    import shutil

    from safetensors.torch import load_file, save_file

    from align.model.checkpoint import resolve_checkpoint, write_manifest

    other = served["tmp"] / "other"
    shutil.copytree(resolve_checkpoint(served["run"]), other)
    weights = load_file(other / "model.safetensors")
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_file(weights, str(other / "model.safetensors"))
    write_manifest(other, 150)
    with pytest.raises(IndexBuildError, match=r"index 'digits' .* was built with a different model"):
        Searcher(other, {"digits": served["folders"]["digits"]})


@pytest.fixture(scope="module")
def heads(adapt_run, tmp_path_factory):
    from tests.support.adapting import fit_heads

    return fit_heads(adapt_run, ["linear-probe", "coop"], tmp_path_factory.mktemp("heads"))


def test_classify_with_a_saved_few_shot_head(adapt_run, heads):
    """A served head's probabilities are the softmax of its own logits for the encoded item; shared
    context takes other class names, a probe keeps its classes; bad names and modalities are refused."""
    from align.model.adapted import load_adapted

    searcher = Searcher(adapt_run, {}, adapters=heads)
    from tests.support.serving import digit_png as digit_bytes

    item = Upload(digit_bytes(3), "d.png")
    query = torch.from_numpy(searcher.encode("image", [item]))
    for name in ("linear-probe", "coop"):
        got = searcher.classify(item, None, None, modality="image", adapter=name)
        head = load_adapted(heads[name], searcher.model)
        with torch.no_grad():
            want = head.logits(query).softmax(-1)[0]
        assert [n for n, _ in got] == [DIGIT_NAMES[i] for i in want.argsort(descending=True)]
        np.testing.assert_allclose([p for _, p in got], want.sort(descending=True).values.numpy(), atol=1e-6)
    assert len(searcher.classify(item, ["three", "eight"], None, modality="image", adapter="coop")) == 2
    with pytest.raises(SearchError, match="into its own classes"):
        searcher.classify(item, ["three", "eight"], None, modality="image", adapter="linear-probe")
    with pytest.raises(SearchError, match="no adapter named 'tip'"):
        searcher.classify(item, None, None, modality="image", adapter="tip")
    with pytest.raises(SearchError, match="classifies 'image' items, not 'text'"):
        searcher.classify("seven", None, None, modality="text", adapter="coop")
    with pytest.raises(SearchError, match="class_names is required"):
        searcher.classify(item, None, None, modality="image")


def test_heads_beside_the_checkpoint_load_with_it_and_a_damaged_one_stops_the_start(adapt_run, heads, tmp_path):
    import shutil

    from align.model.checkpoint import resolve_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(adapt_run), ckpt, ignore=shutil.ignore_patterns("adapted", "adapt*", "eval*"))
    (ckpt / "adapted").mkdir()
    shutil.copy(heads["coop"], ckpt / "adapted" / "coop.safetensors")
    assert sorted(Searcher(ckpt, {}).adapted) == ["coop"]
    (ckpt / "adapted" / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SearchError, match=r"adapter 'bad': .*bad.safetensors: cannot be read"):
        Searcher(ckpt, {})
