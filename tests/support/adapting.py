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
