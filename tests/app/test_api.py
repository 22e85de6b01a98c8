"""The public façade (align/__init__.py): every name in ``__all__`` is its home's object, resolved
lazily (``import align`` loads no torch), and the README's "Python API" example runs as written."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import align

REPO = Path(__file__).resolve().parents[2]

HOMES = {
    "load_config": "align.config.schema:load_config",
    "Config": "align.config.schema:Config",
    "DatasetSpec": "align.config.dataset:DatasetSpec",
    "train": "align.app.trainer:train",
    "crossval": "align.app.crossval:run_crossval",
    "load_model": "align.model.checkpoint:load_model",
    "AlignModel": "align.model.align_model:AlignModel",
    "encode": "align.model.encode:encode",
    "evaluate": "align.eval.commands:run_eval",
    "evaluate_pairs": "align.eval.pairs:run_pairs",
    "few_shot": "align.adapt.run:run_adapt",
    "load_adapted": "align.model.adapted:load_adapted",
    "build_index": "align.index.build:build_index",
    "query_index": "align.index.build:query_index",
    "EmbeddingIndex": "align.index.embedding_index:EmbeddingIndex",
    "AlignError": "align.errors:AlignError",
}


def test_all_lists_the_facade():
    assert set(align.__all__) == {"__version__", *HOMES}
    assert set(HOMES) <= set(dir(align))


@pytest.mark.parametrize("name", sorted(HOMES))
def test_name_is_its_home_object(name):
    module, attr = HOMES[name].split(":")
    assert getattr(align, name) is getattr(importlib.import_module(module), attr)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        align.trian  # noqa: B018
    assert not hasattr(align, "raw_encoder")  # curated: not every library function


def test_import_align_is_light():
    code = (
        "import sys, align\nassert align.__version__\n"
        "print('HEAVY', sorted(m for m in ('torch', 'datasets', 'faiss', 'open_clip', 'sklearn', "
        "'align.app', 'align.model') if m in sys.modules))\n"
        "align.load_config\nprint('CONFIG', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout and "CONFIG False" in out.stdout, out.stdout + out.stderr


def test_load_config_with_overrides():
    cfg = align.load_config(
        REPO / "configs" / "demo-digits.yaml",
        ["train.steps=7", "model.embed_dim=32", "eval.zeroshot.templates=['{}.']"],
    )
    assert isinstance(cfg, align.Config)
    assert (cfg.train.steps, cfg.model.embed_dim, cfg.eval.zeroshot.templates) == (7, 32, ["{}."])
    assert cfg.data.train.source == "sklearn-digits" and cfg.train.lr == 0.001  # the rest as the file says
    with pytest.raises(align.AlignError, match="train.stpes"):
        align.load_config(REPO / "configs" / "demo-digits.yaml", ["train.stpes=7"])


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path):
    """The README's example as written, but 20 steps instead of 100 and its runs/ under tmp_path."""
    code = readme_example()
    assert "train.steps=100" in code
    code = code.replace("train.steps=100", "train.steps=20").replace('"runs/', f'"{tmp_path}/runs/')
    code = code.replace('"output_dir=runs/', f'"output_dir={tmp_path}/runs/')
    assert "runs/api" not in code.replace(f"{tmp_path}/runs/api", "")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    top1 = re.search(r"zero-shot top-1 (\d\.\d{4})", out.stdout)
    assert top1 and 0.0 <= float(top1.group(1)) <= 1.0, out.stdout[-2000:]
    hits = re.findall(r"^(-?\d\.\d{3}) row (\d+) label (\w+)$", out.stdout, re.M)
    assert len(hits) == 3 and [float(h[0]) for h in hits] == sorted((float(h[0]) for h in hits), reverse=True)
    assert (tmp_path / "runs" / "api" / "checkpoints" / "latest").exists()
    assert (tmp_path / "runs" / "api" / "eval" / "zeroshot.json").is_file()
    assert (tmp_path / "runs" / "api-index").is_dir()


def test_facade_names_survive_their_subpackages_being_imported():
    """A façade name equal to a sub-package's (``align.adapt``) would be shadowed by the module once
    anything imports it; none is."""
    import pkgutil

    subpackages = {m.name for m in pkgutil.iter_modules(align.__path__)}
    assert not set(HOMES) & subpackages
