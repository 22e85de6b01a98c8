"""align interpolate (issue 24 item 4, WiSE-FT): each alpha's weights are the mix of the two
checkpoints, written as a loadable checkpoint and scored on every eval config given; checkpoints of
different architectures are refused naming the first differing tensor."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from align.app.cli import main
from align.app.trainer import train
from align.eval.control import headline, load_eval_section
from align.eval.interpolate import InterpolationError, parse_alphas, run_interpolation
from align.eval.runner import evaluate
from align.model.checkpoint import load_model, resolve_checkpoint
from tests.model.test_init_from import config
from tests.support.tiny import DIGITS_MODEL

EVAL = """eval:
  data: {source: sklearn-digits, split: test, columns: {image: image, text: caption}, label_column: label}
  zeroshot:
    query: image
    prompt_modality: text
    classnames: [zero, one, two, three, four, five, six, seven, eight, nine]
    templates: ["a photo of the number {}.", "a handwritten {}."]
  retrieval: {a: image, b: text, ks: [1, 5], positives: label}
"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wise")
    pre = resolve_checkpoint(train(config(tmp, "pre", copy.deepcopy(DIGITS_MODEL), steps=40)).output_dir)
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["init_from"] = str(pre)
    fine = resolve_checkpoint(train(config(tmp, "fine", spec, steps=40)).output_dir)
    (tmp / "eval.yaml").write_text(EVAL)
    return pre, fine, tmp / "eval.yaml"


def test_interpolations_are_the_weight_mix_and_are_scored(two_runs, tmp_path, capsys):
    pre, fine, eval_yaml = two_runs
    out = tmp_path / "wise"
    assert (
        main(
            [
                "interpolate",
                "--from",
                str(pre),
                "--to",
                str(fine),
                "--alphas",
                "0,0.5,1",
                "--config",
                str(eval_yaml),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| alpha | eval: zeroshot/top1 |" in printed and "| 0.50 |" in printed
    a, b = (load_file(str(c / "model.safetensors")) for c in (pre, fine))
    mid = load_file(str(out / "alpha-0.50" / "model.safetensors"))
    for key, value in mid.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2, rtol=0, atol=1e-6)
    assert all(
        torch.equal(v, a[k])
        for k, v in load_file(str(out / "alpha-0.00" / "model.safetensors")).items()
        if v.is_floating_point()
    )
    record = json.loads((out / "interpolation.json").read_text())
    rows = record["sets"][str(eval_yaml)]
    model, _ = load_model(out / "alpha-1.00")
    direct = headline(evaluate(load_model(fine)[0], load_eval_section(eval_yaml)))  # scored directly
    assert rows[-1] == pytest.approx(direct)  # alpha 1 is the fine-tuned checkpoint itself
    assert set(rows[0]) >= {"zeroshot/top1", "retrieval/image_to_text/R@1"}
    assert (out / "interpolation.png").stat().st_size > 1000


def test_other_architectures_and_bad_alphas_are_refused(two_runs, tmp_path):
    pre, _, eval_yaml = two_runs
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["embed_dim"] = 16
    other = resolve_checkpoint(train(config(tmp_path, "other", spec, steps=1)).output_dir)
    with pytest.raises(InterpolationError, match=r"tensor 'heads.image.weight' is \(32, 32\) in --from .* \(16, 32\)"):
        run_interpolation(pre, other, [0.5], [eval_yaml], tmp_path / "out")
    with pytest.raises(InterpolationError, match=r"--alphas: give numbers in \[0, 1\]"):
        parse_alphas("0,1.5")


def test_a_lora_run_is_merged_before_mixing(two_runs, tmp_path):
    """WiSE-FT towards a LoRA run: its adapters are folded into its base first, so the mix equals the
    mix towards the merged checkpoint (``align lora merge``)."""
    from tests.model.test_lora import lora_spec

    pre, _, eval_yaml = two_runs
    lora = resolve_checkpoint(train(config(tmp_path, "lora", lora_spec(pre), steps=10)).output_dir)
    assert main(["lora", "merge", str(lora), "--out", str(tmp_path / "merged")]) == 0
    run_interpolation(pre, lora, [0.5], [eval_yaml], tmp_path / "via-lora")
    run_interpolation(pre, tmp_path / "merged", [0.5], [eval_yaml], tmp_path / "via-merged")
    a, b = (load_file(str(tmp_path / d / "alpha-0.50" / "model.safetensors")) for d in ("via-lora", "via-merged"))
    assert set(a) == set(b) and not any(".lora_" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    base = load_file(str(pre / "model.safetensors"))
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], base[k])]
    assert any(k.startswith("adapters.") for k in moved)  # the merged adapters moved the towers
