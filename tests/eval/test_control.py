"""eval.control (issue 24 item 5): sets the run does not train on, scored before the first step and
after the last, side by side, with a warning for each metric that fell past eval.control_max_drop."""

from __future__ import annotations

import copy
import json

import pytest

from align.app.trainer import train
from align.eval.control import headline, load_eval_section
from align.eval.runner import evaluate
from align.model.checkpoint import load_model
from tests.eval.test_interpolate import EVAL
from tests.model.test_init_from import config
from tests.model.test_init_from import pretrained as pretrained  # noqa: F401  (fixture: 150 steps on digits)
from tests.support.tiny import DIGITS_MODEL

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_forgetting_is_measured_and_warned(pretrained, tmp_path, capsys):  # noqa: F811
    control = tmp_path / "digits-control.yaml"
    control.write_text(EVAL)
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["init_from"] = str(pretrained)
    cfg = config(tmp_path, "fine", spec, steps=60)
    # fine-tuned on captions that name the wrong digit: what zero-shot on the real names must forget
    cfg.data.train.label_names = dict(zip(NAMES, NAMES[1:] + NAMES[:1]))  # zero -> "one", ...: renamed
    cfg.data.train.caption_templates = ["a photo of the number {}."]
    cfg.data.train.columns = {"image": "image", "text": "label_captions"}
    cfg.eval = load_eval_section(control)
    cfg.eval.control, cfg.eval.control_max_drop = [str(control)], 0.05
    cfg.train.eval_at_end = False
    result = train(cfg)
    record = json.loads((tmp_path / "fine" / "eval" / "control.json").read_text())
    rows = {r["metric"]: r for r in record["rows"]}
    ecfg = load_eval_section(control)
    before = headline(evaluate(load_model(pretrained)[0], ecfg))
    after = headline(evaluate(result.model, ecfg))
    for key, row in rows.items():
        assert row["before"] == pytest.approx(before[key]) and row["after"] == pytest.approx(after[key])
    top1 = rows["zeroshot/top1"]
    assert top1["before"] - top1["after"] > 0.05, top1
    out = capsys.readouterr().out
    assert "| control set | metric | before | after | change |" in out
    assert "WARNING forgetting: digits-control zeroshot/top1 fell" in out
    assert (tmp_path / "fine" / "eval" / "control.md").is_file()
