"""`align eval pairs` on a tiny image + two-text-tower checkpoint trained on real digits: every pair
in both directions, each pair's numbers exactly `align eval retrieval`'s for that pair, every
modality encoded once, the markdown table and the heat-map written; too few modalities refused."""

from __future__ import annotations

import copy
import json
import math
import struct
from collections import Counter

import pytest
import yaml

from align.app.cli import main
from tests.support.tiny import TINY_MODALITIES

DATA = {
    "source": "sklearn-digits",
    "split": "test",
    "label_column": "label",
    "columns": {"image": "image", "text": "caption", "text2": "caption"},
}
BATCH = 128  # 360 test rows -> 3 image batches; 80 distinct captions -> 1 batch per text tower


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from align.app.trainer import train
    from align.config.schema import config_from_dict

    tmp = tmp_path_factory.mktemp("pairs")
    mods = copy.deepcopy(TINY_MODALITIES)
    mods["text2"] = {"adapter": "text", **copy.deepcopy(TINY_MODALITIES["text"])}
    cfg = config_from_dict(
        {
            "output_dir": str(tmp / "run"),
            "seed": 0,
            "model": {"embed_dim": 16, "modalities": mods},
            "data": {"train": {**DATA, "split": "train"}},
            "train": {
                "batch_size": 32,
                "steps": 200,
                "lr": 2e-3,
                "weight_decay": 0.0,
                "progress": False,
                "log_every": 10,
            },
        }
    )
    train(cfg)  # ~7 s on 2 cores: well above chance, so the compared numbers differ per pair
    return tmp


def eval_yaml(path, retrieval: dict | None = None, columns: dict | None = None):
    section = {"data": {**DATA, "columns": columns or DATA["columns"]}, "batch_size": BATCH}
    if retrieval is not None:
        section["retrieval"] = retrieval
    path.write_text(yaml.safe_dump({"eval": section}))
    return str(path)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_pair_equals_its_single_retrieval_and_each_modality_is_encoded_once(run, tmp_path, capsys, monkeypatch):
    import align.eval.pairs as pairs
    import align.model.checkpoint as checkpoint

    cfg = eval_yaml(tmp_path / "eval.yaml", {"positives": "label", "ks": [1, 5, 10]})
    calls: Counter = Counter()
    real_load = checkpoint.load_model

    def spied_load(path):
        model, config = real_load(path)
        encode = model.encode

        def counted(modality, batch):  # a call counter; the real encoder computes the result
            calls[modality] += 1
            return encode(modality, batch)

        model.encode = counted
        return model, config

    monkeypatch.setattr(pairs, "load_model", spied_load)  # where `align eval pairs` looks it up
    out = tmp_path / "pairs"
    assert main(["eval", "pairs", "--checkpoint", str(run / "run"), "--config", cfg, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "pairs.json").read_text())
    m = report["metrics"]
    assert report["schema"] == "align.eval/v1" and report["task"] == "pairs"
    assert m["modalities"] == ["image", "text", "text2"] and m["settings"]["from"].startswith("config")
    # one pass per column: 360 image rows in batches of 128, each tower's 80 distinct captions in one
    assert m["encoded"] == {
        "image": {"items": 360, "level": "rows"},
        "text": {"items": 80, "level": "distinct items"},
        "text2": {"items": 80, "level": "distinct items"},
    }
    assert dict(calls) == {mod: math.ceil(e["items"] / BATCH) for mod, e in m["encoded"].items()}
    assert dict(calls) == {"image": 3, "text": 1, "text2": 1}
    assert [(p["a"], p["b"]) for p in m["pairs"]] == [("image", "text"), ("image", "text2"), ("text", "text2")]
    directions = {d for p in m["pairs"] for d in p["directions"]}
    assert directions == {f"{q}_to_{g}" for q in m["modalities"] for g in m["modalities"] if q != g}
    r1 = [v for row in m["r1"].values() for v in row.values()]
    assert len(r1) == 6 and max(r1) > 0.3 and len(set(r1)) > 2  # learnt (chance is 0.1), not degenerate
    monkeypatch.setattr(checkpoint, "load_model", real_load)
    for p in m["pairs"]:  # the same numbers as the one-pair command with the same settings
        single = tmp_path / f"{p['a']}-{p['b']}"
        assert (
            main(
                [
                    "eval",
                    "retrieval",
                    "--checkpoint",
                    str(run / "run"),
                    "--config",
                    cfg,
                    "--out",
                    str(single),
                    f"eval.retrieval.a={p['a']}",
                    f"eval.retrieval.b={p['b']}",
                ]
            )
            == 0
        )
        ref = json.loads((single / "retrieval.json").read_text())["metrics"]
        for name, d in p["directions"].items():
            assert set(d) == {"R@1", "R@5", "R@10", "MRR", "n"}
            for key in ("R@1", "R@5", "R@10", "MRR"):
                assert d[key] == ref[f"{name}/{key}"], (name, key)
            assert d["n"] == ref[f"{name}/n_queries"]
        assert (p["n_a"], p["n_b"], p["n_b_items"]) == (ref["n_a"], ref["n_b"], ref["n_b_items"])
        assert p["faiss"] == ref["faiss"]
        assert m["r1"][p["a"]][p["b"]] == ref[f"{p['a']}_to_{p['b']}/R@1"]
    # the table: rows = query, columns = gallery, R@1, the diagonal blank; printed as written
    md = (out / "pairs.md").read_text()
    assert md in printed and "positives: label" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| query \\ gallery | image | text | text2 |" and len(rows) == 4
    assert rows[2].split(" | ")[2] == "—"  # text -> text
    assert rows[1].split(" | ")[2] == f"{m['r1']['image']['text']:.4f}"
    width, height = png_size(out / "pairs_r1.png")
    assert 200 <= width <= 2000 and 200 <= height <= 2000
    assert 5_000 < (out / "pairs_r1.png").stat().st_size < 2_000_000


def test_defaults_without_a_retrieval_section_and_too_few_modalities(run, tmp_path, capsys):
    ckpt = str(run / "run")
    assert (
        main(
            [
                "eval",
                "pairs",
                "--checkpoint",
                ckpt,
                "--config",
                eval_yaml(tmp_path / "e.yaml"),
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    assert "settings from defaults" in capsys.readouterr().out
    s = json.loads((tmp_path / "d" / "pairs.json").read_text())["metrics"]["settings"]
    assert (s["ks"], s["positives"], s["dedupe"]) == ([1, 5, 10], "label", True)  # digits have labels
    for columns in ({"image": "image"}, {"image": "image", "audio": "caption"}):
        bad = eval_yaml(tmp_path / "one.yaml", columns=columns)
        assert main(["eval", "pairs", "--checkpoint", ckpt, "--config", bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "eval.data.columns" in err and "at least 2" in err


def test_several_tables_merge_into_one_report(run, tmp_path, capsys):
    """A model trained on several sets (data.mix) has no one table with every modality: each
    --config's table is scored on its own pairs, and the merged matrix holds each pair's numbers
    from its table (equal to that table's own report); pairs no table holds stay blank."""
    both = eval_yaml(tmp_path / "a.yaml", {"positives": "label"}, {"image": "image", "text": "caption"})
    other = eval_yaml(tmp_path / "b.yaml", {"positives": "row"}, {"text2": "caption", "image": "image"})
    out = tmp_path / "merged"
    assert (
        main(
            ["eval", "pairs", "--checkpoint", str(run / "run"), "--config", both, "--config", other, "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("retrieval settings from config") == 2
    m = json.loads((out / "pairs.json").read_text())["metrics"]
    assert m["modalities"] == ["image", "text", "text2"]
    assert [(p["a"], p["b"], p["table"]) for p in m["pairs"]] == [("image", "text", 0), ("image", "text2", 1)]
    assert m["r1"]["text"].keys() == {"image"} and "text2" not in m["r1"]["text"]  # never in one table
    for i, cfg in enumerate((both, other)):
        single = tmp_path / f"single{i}"
        assert main(["eval", "pairs", "--checkpoint", str(run / "run"), "--config", cfg, "--out", str(single)]) == 0
        alone = json.loads((single / "pairs.json").read_text())["metrics"]
        assert alone["pairs"][0]["directions"] == m["pairs"][i]["directions"]
    assert "| text | " in (out / "pairs.md").read_text() and png_size(out / "pairs_r1.png")[0] > 0
    with pytest.raises(SystemExit, match="--config once"):
        main(["eval", "zeroshot", "--checkpoint", str(run / "run"), "--config", both, "--config", other])
