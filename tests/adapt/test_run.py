"""``align adapt`` end to end on a tiny digits run: every method on the same draws, mean ± std, the
report, plot and saved heads; a saved head scores the same through ``align eval zeroshot --adapter``;
base-to-novel; ``align eval probe``; and each bad input's error."""

import json

import pytest
import torch

from align.adapt.protocol import AdaptError
from align.adapt.run import run_adapt
from align.adapt.shots import ShotError
from align.eval.commands import EvalError, run_eval
from align.model.checkpoint import resolve_checkpoint
from tests.support.adapting import QUICK_STEPS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(adapt_run):
    return run_adapt(adapt_run, shots=[1, 4], seeds=2, steps=QUICK_STEPS, log=lambda *_: None)


def test_every_method_over_shots_and_seeds(report, adapt_run):
    assert report["zero_shot"]["top1"] > 0.5  # the tiny model learned the classes
    methods = ["linear-probe", "zs-probe", "tip-adapter", "tip-adapter-f", "coop", "coop-csc", "cocoop"]
    assert list(report["methods"]) == methods
    for method in methods:
        for k in ("1", "4"):
            top1 = report["methods"][method][k]["top1"]
            assert len(top1["runs"]) == 2 and top1["mean"] == pytest.approx(sum(top1["runs"]) / 2)
            assert top1["std"] == pytest.approx(abs(top1["runs"][0] - top1["runs"][1]) / 2**0.5)
    assert report["methods"]["linear-probe"]["4"]["top1"]["mean"] > 0.5
    assert report["methods"]["linear-probe"]["1"]["fitted"][0]["cv"] is None  # one shot: nothing to hold out
    folder = resolve_checkpoint(adapt_run) / "adapt"
    assert json.loads((folder / "adapt.json").read_text())["shots"] == [1, 4]
    assert "| coop |" in (folder / "adapt.md").read_text() and (folder / "adapt.png").stat().st_size > 5000


@pytest.mark.parametrize("method", ["linear-probe", "tip-adapter-f", "coop", "cocoop"])
def test_a_saved_head_scores_the_same_through_eval(report, adapt_run, method):
    """The head fitted on seed 0's largest draw, reloaded from <checkpoint>/adapted, gives the top-1
    the protocol recorded for that draw."""
    assert report["saved"][method].endswith(f"adapted/{method}.safetensors")
    out = run_eval("zeroshot", adapt_run, adapter=method, out=resolve_checkpoint(adapt_run) / f"eval-{method}")
    assert out["metrics"]["adapter"].endswith(f"{method}.safetensors")
    assert out["metrics"]["top1"] == pytest.approx(report["methods"][method]["4"]["top1"]["runs"][0], abs=1e-6)


def test_base_to_novel(adapt_run, tmp_path):
    r = run_adapt(
        adapt_run, shots=[2], seeds=1, methods=["linear-probe", "tip-adapter", "coop"], base_classes="0,1,2,3,4",
        steps=QUICK_STEPS, out=tmp_path, log=lambda *_: None,
    )  # fmt: skip
    b2n = r["base_to_novel"]
    assert b2n["base_classes"] == ["zero", "one", "two", "three", "four"] and len(b2n["novel_classes"]) == 5
    lp, tip, coop = (r["methods"][m]["2"] for m in ("linear-probe", "tip-adapter", "coop"))
    assert lp["novel"]["mean"] is None and "base classes only" in lp["fitted"][0]["novel"]
    assert tip["novel"]["mean"] == pytest.approx(b2n["zero_shot"]["novel"])  # no novel shots in its cache
    base, novel = coop["base"]["mean"], coop["novel"]["mean"]
    assert coop["hm"]["mean"] == pytest.approx(2 * base * novel / (base + novel))
    assert r["saved"] == {} and (tmp_path / "adapt.md").read_text().count("| coop | 2 |") == 1


def test_linear_probe_eval_task(adapt_run):
    out = run_eval("probe", adapt_run)
    m = out["metrics"]
    assert out["task"] == "probe" and m["query"] == "image" and m["n_train"] == 1437 and m["top1"] > 0.5
    few = run_eval("probe", adapt_run, overrides=["eval.probe.shots=2"])["metrics"]
    assert few["n_train"] == 20 and few["probe"]["cv"]["folds"] == 2
    with pytest.raises(EvalError, match="has no modality 'audio' to probe"):
        run_eval("probe", adapt_run, overrides=["eval.probe.query=audio"])


def test_bad_input(adapt_run, tmp_path):
    too_few = r"500 shots per class asked, but 'zero' has 142, 'one' has 146, .* 'nine' has 144 training"
    with pytest.raises(ShotError, match=too_few):
        run_adapt(adapt_run, shots=[500], seeds=1, out=tmp_path, log=lambda *_: None)
    with pytest.raises(AdaptError, match="checkpoint has no modality 'audio' to classify"):
        from align.adapt.protocol import check_query
        from align.model.checkpoint import load_model

        model, cfg = load_model(adapt_run)
        check_query(model, cfg, "audio", "eval.zeroshot.query")
    from align.adapt.methods import coop
    from align.adapt.run import build_task
    from align.eval.commands import eval_config
    from align.model.prompt_context import PromptContextError

    model, cfg = load_model(adapt_run)
    task, _, _ = build_task(model, cfg, eval_config("zeroshot", cfg))
    task.prompt_modality = "image"
    with pytest.raises(PromptContextError, match=r"prompt modality 'image' \(adapter 'image'\)"):
        coop(task, torch.zeros(10, 32), torch.arange(10), 0)


def test_cli_takes_the_runs_config(adapt_run, tmp_path, capsys):
    """``align adapt CONFIG.yaml`` finds the checkpoint its output_dir trained; prints the table."""
    import yaml

    from align.app.cli import main
    from tests.support.adapting import adapt_config

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(adapt_config(adapt_run)))
    args = ["adapt", str(config), "--shots", "1,2", "--seeds", "1", "--methods", "tip-adapter,zs-probe"]
    assert main([*args, "--no-save", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| tip-adapter |" in out and "| zs-probe |" in out and "Zero-shot top-1" in out
    assert json.loads((tmp_path / "out" / "adapt.json").read_text())["saved"] == {}
    assert main(["adapt", str(config), "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
