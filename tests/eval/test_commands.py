"""`align eval zeroshot|retrieval` on a checkpoint trained on real digits: reports in the
documented schema, numbers identical to evaluating the in-memory model."""

from __future__ import annotations

import json

import pytest

from align.app.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--steps", "40", "train.progress=false"]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_zeroshot_report_matches_in_memory_eval(demo_run, capsys):
    out, metrics = demo_run
    assert main(["eval", "zeroshot", "--checkpoint", str(out), "--out", str(out / "ev")]) == 0
    report = json.loads((out / "ev" / "zeroshot.json").read_text())
    assert report["schema"] == "align.eval/v1" and report["task"] == "zeroshot"
    assert report["model"]["step"] == 40 and report["model"]["modalities"] == ["image", "text"]
    assert {k: report["dataset"][k] for k in ("source", "split", "rows")} == {
        "source": "sklearn-digits",
        "split": "test",
        "rows": 360,
    }
    assert report["dataset"]["classes"] == report["metrics"]["classnames"]  # class id i is classes[i]
    # reloaded from safetensors, the model gives exactly the in-memory numbers
    assert report["metrics"]["top1"] == metrics["zeroshot"]["top1"]
    assert report["metrics"]["confusion_matrix"] == metrics["zeroshot"]["confusion_matrix"]
    assert (out / "ev" / "confusion.png").is_file()
    assert "top-1" in capsys.readouterr().out


def test_retrieval_report_and_overrides(demo_run, tmp_path):
    out, metrics = demo_run
    assert (
        main(["eval", "retrieval", "--checkpoint", str(out), "--out", str(tmp_path), "eval.retrieval.ks=[1, 10]"]) == 0
    )
    m = json.loads((tmp_path / "retrieval.json").read_text())["metrics"]
    assert set(k for k in m if "/R@" in k) == {
        "image_to_text/R@1",
        "image_to_text/R@10",
        "text_to_image/R@1",
        "text_to_image/R@10",
    }
    assert m["image_to_text/R@1"] == metrics["retrieval"]["image_to_text/R@1"]
    assert m["n_b_items"] == 360 * 8 and m["positives"] == "label"
    assert m["n_b"] == 80  # 10 classes x 8 templates: each distinct caption is one gallery item
    for name in ("recall_at_k.png", "queries.png"):  # plots beside the report
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_templates_file_and_bad_requests(demo_run, tmp_path, capsys):
    out, _ = demo_run
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of the number {}.\n\nthe digit {c}.\n")
    assert main(["eval", "zeroshot", "--checkpoint", str(out), "--out", str(tmp_path), "--templates", str(tpl)]) == 0
    assert main(["eval", "zeroshot", "--checkpoint", str(out), "--out", str(tmp_path), "--templates", "digits"]) == 0
    from align.eval.zeroshot_metrics import load_templates, shipped_templates

    assert {"digits", "spoken_digits", "imagenet_clip_short"} <= set(shipped_templates())
    for name in shipped_templates():
        assert all("{}" in t for t in load_templates(name)), name
    assert main(["eval", "retrieval", "--checkpoint", str(out), "eval.retrieval.b=audio"]) == 2
    assert "audio" in capsys.readouterr().err
    assert main(["eval", "zeroshot", "--checkpoint", str(out), "eval.zeroshot.clasnames=[a, b]"]) == 2
    assert "eval.zeroshot.clasnames" in capsys.readouterr().err
    assert main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "nothing")]) == 2


def test_faiss_recall_equals_exact_recall(demo_run):
    """The demo's retrieval goes through a FAISS Flat index; it must give the exact metrics' R@k."""
    _, metrics = demo_run
    r = metrics["retrieval"]
    assert r["faiss"]["spec"] == "Flat"
    keys = [k for k in r["faiss"] if "/R@" in k]
    assert len(keys) == 4
    for k in keys:
        assert r["faiss"][k] == pytest.approx(r[k], abs=1e-12), k


def test_index_build_and_query(demo_run, tmp_path, capsys):
    out, _ = demo_run
    data = "{source: sklearn-digits, split: test, columns: {image: image, text: caption}, label_column: label}"
    folder = tmp_path / "idx"
    assert (
        main(["index", "build", "--checkpoint", str(out), "--data", data, "--modality", "image", "--out", str(folder)])
        == 0
    )
    assert "indexed 360 image items" in capsys.readouterr().out
    # never overwrites an existing index unless asked
    assert (
        main(["index", "build", "--checkpoint", str(out), "--data", data, "--modality", "image", "--out", str(folder)])
        == 2
    )
    assert "exist" in capsys.readouterr().err
    from align.index.build import query_index

    hits = query_index(folder, "text", "a photo of the number seven.", k=10)
    assert len(hits) == 10 and all(-1.0 <= s <= 1.0 for s, _, _ in hits)
    assert [s for s, _, _ in hits] == sorted((s for s, _, _ in hits), reverse=True)
    meta = hits[0][2]
    assert set(meta) >= {"row", "label", "caption"} and meta["caption"].startswith(("a ", "the "))
    assert main(["query", "--index", str(folder), "--text", "the digit three.", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "label=" in lines[0]
    # an index from another model is refused
    other = tmp_path / "other"
    import shutil

    shutil.copytree(out / "checkpoints", other)
    from safetensors.torch import load_file, save_file

    ckpt = next(p for p in other.iterdir() if p.name.startswith("step-"))
    weights = load_file(ckpt / "model.safetensors")
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_file(weights, str(ckpt / "model.safetensors"))
    from align.model.checkpoint import write_manifest

    write_manifest(ckpt, 40)  # a valid checkpoint of another model (unrecorded weights are damage, not that)
    assert main(["query", "--index", str(folder), "--checkpoint", str(ckpt), "--text", "seven"]) == 2
    assert "different model" in capsys.readouterr().err
