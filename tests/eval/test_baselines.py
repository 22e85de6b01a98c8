"""eval.baselines: a supervised reference on the same rows for every modality, or a refusal naming why."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.app.cli import main
from align.config.schema import load_config
from align.eval.baselines import input_logreg

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def test_raw_pixels_on_the_demo_rows_beat_chance_by_far():
    cfg = load_config(REPO / "configs" / "demo-digits.yaml")
    r = input_logreg(cfg, "image")
    assert (r["n_train"], r["n_test"], r["n_classes"]) == (1437, 360, 10)
    assert r["accuracy"] > 0.9, r  # digits are easy from pixels; chance is 0.1
    assert r["features"].startswith("raw image input (3072 values), PCA to 256"), r


def test_text_baseline_is_tfidf_and_learns_captions_that_name_the_class():
    cfg = load_config(REPO / "configs" / "demo-digits.yaml")
    r = input_logreg(cfg, "text")
    assert r["features"] == "TF-IDF of the words" and r["accuracy"] == 1.0  # every caption names its digit


def test_tabular_baseline_cli(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["eval", "baseline", "configs/breast-cancer-tabular-text.yaml"]) == 0
    out = capsys.readouterr().out
    assert "on raw tabular input (30 values)" in out and "rows of sklearn-table split 'test'" in out, out
    assert float(out.split("accuracy ")[1].split()[0]) > 0.9, out


@pytest.mark.skipif(not (SHARED / "graph").is_dir(), reason="shared graph data missing")
def test_graph_classification_baseline_from_node_feature_summaries(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["eval", "baseline", "configs/tu-mutag-text.yaml"]) == 0
    out = capsys.readouterr().out
    assert "mean/max node features and node/edge counts" in out and "(2 classes" in out, out
    assert float(out.split("accuracy ")[1].split()[0]) > 0.7, out  # MUTAG's majority class is ~0.66


def test_refusals_are_one_line(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["eval", "baseline", "configs/demo-digits.yaml", "data.train.label_column=null"]) == 2
    assert "config key 'data.train.label_column': the baseline needs labels" in capsys.readouterr().err
    cfg = load_config(REPO / "configs" / "demo-digits.yaml")
    with pytest.raises(ValueError, match=r"config key 'data.train.columns': no 'audio' column for the baseline"):
        input_logreg(cfg, "audio")
