"""A package outside this repository adds a modality, a data source and a loss with no fork: it
declares them under the ``align.modalities`` / ``align.sources`` / ``align.losses`` entry-point
groups, gets installed, and ``align data`` / ``align train`` use them by name; their names are
listed before anything is imported, so a typo lists them too."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import yaml

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "align-plugin-demo"
version = "0.0.1"

[project.entry-points."align.modalities"]
scalar = "align_plugin_demo.scalar"

[project.entry-points."align.sources"]
ramp = "align_plugin_demo.sources:ramp"

[project.entry-points."align.losses"]
halved_clip = "align_plugin_demo.losses"
"""

SCALAR = '''
"""A one-number modality: x -> MLP features."""
import torch
from torch import nn

from align.errors import SampleError
from align.registry import ADAPTERS
from align.modalities.base import AdapterOptions, ModalityAdapter, Preprocessor


class ScalarOptions(AdapterOptions):
    width: int = 32


class ScalarPreprocessor(Preprocessor):
    def __call__(self, raw, *, train):
        if not isinstance(raw, (int, float)):
            raise SampleError(f"scalar sample must be a number, got {raw!r}")
        return torch.tensor([float(raw)])


@ADAPTERS.register("scalar")
class ScalarAdapter(ModalityAdapter):
    Options = ScalarOptions

    def __init__(self, options):
        super().__init__(options)
        self.net = nn.Sequential(nn.Linear(1, options.width), nn.GELU(), nn.Linear(options.width, options.width))
        self.feature_dim = options.width

    def preprocessor(self):
        return ScalarPreprocessor()

    def forward(self, batch):
        return self.net(batch)
'''

SOURCES = '''
def ramp(spec):
    """Numbers 0..199 labelled low (< 100) or high: a table any align config can name."""
    import datasets

    values = list(range(200))
    return datasets.Dataset.from_dict(
        {"value": [float(v) / 100 for v in values], "label": [int(v >= 100) for v in values]},
        features=datasets.Features({"value": datasets.Value("float32"),
                                    "label": datasets.ClassLabel(names=["low", "high"])}))
'''

LOSS = '''
"""CLIP on logits multiplied by a fixed factor (a loss option), starting from temperature 1."""
import torch
import torch.nn.functional as F

from align.objectives.losses import Loss
from align.registry import LOSSES

CALLS = []


@LOSSES.register("halved_clip")
class HalvedClipLoss(Loss):
    init_logit_scale = 0.0  # exp(0) = 1: what a model using this loss starts from

    def __init__(self, factor=0.5, local_loss=True, rank=None, world_size=None):
        super().__init__(rank, world_size)
        self.factor = factor

    def forward(self, a, b, logit_scale, logit_bias=None):
        CALLS.append(a.shape[0])
        logits = self.factor * logit_scale * a @ b.T
        labels = torch.arange(a.shape[0], device=a.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
'''


def test_a_plugin_package_adds_a_modality_a_source_and_a_loss(tmp_path):
    pkg = tmp_path / "plugin"
    (pkg / "align_plugin_demo").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "align_plugin_demo" / "__init__.py").write_text("")
    (pkg / "align_plugin_demo" / "scalar.py").write_text(SCALAR)
    (pkg / "align_plugin_demo" / "sources.py").write_text(SOURCES)
    (pkg / "align_plugin_demo" / "losses.py").write_text(LOSS)
    site = tmp_path / "site"
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *isolation, "--target", str(site), str(pkg)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "model": {
            "embed_dim": 16,
            "modalities": {
                "scalar": {"options": {"width": 16}},
                "text": {
                    "options": {
                        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
                        "output_dim": 32,
                    }
                },
            },
            "loss": "halved_clip",
            "loss_options": {"factor": 0.5},
        },
        "data": {
            "train": {
                "source": "ramp",
                "columns": {"scalar": "value", "text": "label_captions"},
                "label_column": "label",
                "caption_templates": ["a {} number."],
            }
        },
        "train": {"batch_size": 32, "steps": 5, "progress": False, "log_every": 5},
        "eval": {
            "data": {"source": "ramp", "columns": {"scalar": "value"}, "label_column": "label"},
            "zeroshot": {"templates": ["a {} number."]},
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code = (
        "import sys\n"
        "from align.registry import ADAPTERS\n"
        "from align.data.sources import SOURCES\n"
        "assert 'scalar' in ADAPTERS.names() and 'ramp' in SOURCES.names()\n"
        "assert 'align_plugin_demo.scalar' not in sys.modules  # listed, not imported\n"
        "try:\n"
        "    ADAPTERS.get('scalr')\n"
        "except KeyError as err:\n"
        "    assert \"'scalar'\" in str(err) and \"'image'\" in str(err), err\n"
        "from align.registry import LOSSES\n"
        "assert 'halved_clip' in LOSSES.names() and 'align_plugin_demo.losses' not in sys.modules\n"
        "from align.config.schema import load_config\n"
        "from align.errors import ConfigError\n"
        "try:\n"
        f"    load_config({str(tmp_path / 'c.yaml')!r}, ['model.loss=halved_clp'])\n"
        "    raise AssertionError('a misspelled loss validated')\n"
        "except ConfigError as err:\n"
        "    assert \"'model.loss': unknown loss 'halved_clp'\" in str(err) and 'halved_clip, hcl' in str(err), err\n"
        f"cfg = load_config({str(tmp_path / 'c.yaml')!r})\n"
        "from align.model.align_model import AlignModel\n"
        "assert AlignModel(cfg.model).logit_scale.item() == 0.0  # the plugin loss's own start\n"
        "from align.app.cli import main\n"
        f"assert main(['data', {str(tmp_path / 'c.yaml')!r}]) == 0\n"
        f"assert main(['train', {str(tmp_path / 'c.yaml')!r}]) == 0\n"
        "from align_plugin_demo.losses import CALLS\n"
        "assert len(CALLS) >= 5 and set(CALLS) == {32}, CALLS  # the training loss was the plugin's\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.stdout[-1500:], out.stderr[-3000:])
    assert "data.train: 200 rows from ramp" in out.stdout
    assert "classes (id: name count): 0: low 100, 1: high 100" in out.stdout
    assert (tmp_path / "run" / "eval" / "zeroshot.json").is_file()


def test_reloading_a_checkpoint_resets_nested_pretrained_options():
    """Video's per-frame tower keeps its options nested; a reload must not fetch its weights."""
    from align.registry import ADAPTERS

    video = {"image": {"model": "ViT-B-32", "pretrained": "openai"}, "frames": 4}
    assert ADAPTERS.get("video").reload_options(video) == {
        "image": {"model": "ViT-B-32", "pretrained": None},
        "frames": 4,
    }
    assert video["image"]["pretrained"] == "openai"  # the caller's dict is not changed
    assert ADAPTERS.get("text").reload_options({"model": "RN50", "pretrained": "openai"})["pretrained"] is None


def test_a_missing_modality_extra_is_named_at_validation(tmp_path):
    """A config naming the graph modality on an install without rdkit fails before anything loads,
    naming the extra that brings it (simulated by hiding the installed package)."""
    code = (
        "import sys\n"
        "sys.modules['rdkit'] = None  # as if align was installed without the [graph] extra\n"
        "from align.app.cli import main\n"
        "raise SystemExit(main(['data', 'configs/chebi20-graph-text.yaml']))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        "align: error: config key 'model.modalities.graph': 'graph' needs rdkit, which is "
        "not installed: pip install 'align[graph]'"
    )
