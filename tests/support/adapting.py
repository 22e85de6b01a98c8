"""A tiny image<->text digits run with a zero-shot eval section, trained once per session, for the
few-shot tests (``align adapt``, ``eval probe``, ``--adapter``, serving a saved head).

    from tests.support.adapting import adapt_run  # noqa: F401  (a pytest fixture)
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.support.tiny import DIGITS_MODEL

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the number {}.", "the digit {}."]
# the methods' optimisation shortened for tests (the defaults are 100-200 steps)
QUICK_STEPS = {"tip-adapter-f": 20, "coop": 25, "coop-csc": 25, "cocoop": 10}


def digits_spec(split: str) -> dict:
    return {
        "source": "sklearn-digits",
        "split": split,
        "columns": {"image": "image", "text": "caption"},
        "label_column": "label",
    }


def adapt_config(out: Path, steps: int = 150) -> dict:
    return {
        "output_dir": str(out),
        "seed": 0,
        "model": copy.deepcopy(DIGITS_MODEL),
        "data": {"train": digits_spec("train"), "num_workers": 0},
        "train": {
            "batch_size": 64, "steps": steps, "lr": 2e-3, "warmup_steps": 5, "progress": False, "eval_at_end": False,
        },
        "eval": {
            "data": digits_spec("test"),
            "zeroshot": {"query": "image", "classnames": NAMES, "templates": TEMPLATES},
        },
    }  # fmt: skip


@pytest.fixture(scope="session")
def adapt_run(tmp_path_factory) -> Path:
    """The run folder of the tiny digits model (150 steps, ~15 s on one core)."""
    import torch

    from align.app.trainer import train
    from align.config.schema import config_from_dict

    out = tmp_path_factory.mktemp("adapt") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config_from_dict(adapt_config(out)))
    finally:
        torch.set_num_threads(before)
    return out


def fit_heads(run: Path, methods: list[str], folder: Path, k: int = 4) -> dict[str, Path]:
    """Fit ``methods`` on seed 0's ``k``-shot draw of ``run`` (quick steps) and save each head in
    ``folder`` (not beside the checkpoint, so tests sharing the run do not see each other's files)."""
    from align.adapt.protocol import run_protocol
    from align.adapt.run import build_task, embed_draws
    from align.eval.commands import eval_config
    from align.model.adapted import save_adapted
    from align.model.checkpoint import load_model

    model, cfg = load_model(run)
    ecfg = eval_config("zeroshot", cfg)
    task, pool, _ = build_task(model, cfg, ecfg, QUICK_STEPS)
    embed_draws(task, pool, cfg, ecfg, list(range(10)), k, 1)
    heads = run_protocol(task, pool, [k], 1, methods, keep_heads=True, log=lambda *_: None)["heads"]
    return {name: save_adapted(head, folder / f"{name}.safetensors") for name, head in heads.items()}
