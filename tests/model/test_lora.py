"""LoRA on any tower through peft (issue 24 item 2): a LoRA run from a pretrained checkpoint trains
only the adapters (and heads), saves only them plus a reference to its base, loads them back on the
base (refused when the base changed), merges into a plain checkpoint that encodes the same (1e-5),
and resumes exactly."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from align.app.cli import main
from align.app.trainer import train
from align.config.schema import ModelConfig
from align.errors import ConfigError
from align.model.align_model import AlignModel
from align.model.checkpoint import CheckpointError, load_model, resolve_checkpoint
from tests.model.test_init_from import config
from tests.support.tiny import DIGITS_MODEL

TARGETS = r".*(attn|mlp\.c_fc|mlp\.c_proj)$"  # open_clip blocks: nn.MultiheadAttention and the MLP


def lora_spec(base) -> dict:
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["init_from"] = str(base)
    for mod in ("image", "text"):
        spec["modalities"][mod]["lora"] = {"target_modules": TARGETS, "r": 4, "alpha": 8}
    return spec


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora-base")
    return resolve_checkpoint(train(config(tmp, "base", copy.deepcopy(DIGITS_MODEL), steps=40)).output_dir)


def encode(model, pixels, texts):
    model.eval()
    with torch.no_grad():
        from align.model.align_model import raw_encoder

        return raw_encoder(model, "image")(pixels), raw_encoder(model, "text")(texts)


def test_a_lora_run_trains_saves_loads_and_merges(base, tmp_path):
    from align.data.sources.sklearn_digits import sklearn_digits

    base_state = load_file(str(base / "model.safetensors"))
    result = train(config(tmp_path, "lora", lora_spec(base), steps=20))
    ckpt = resolve_checkpoint(result.output_dir)
    trained = result.model.state_dict()
    for name, value in trained.items():  # every base tensor of a LoRA tower is the base's
        plain = name.replace(".base_layer", "")
        if name.startswith(("adapters.image.", "adapters.text.")) and ".lora_" not in name:
            # peft's nn.MultiheadAttention LoRA merges into in_proj_weight for each forward and unmerges
            # after: float round-off (measured 3.7e-8 after 20 steps), never a trained change
            assert (value.cpu() - base_state[plain]).abs().max() <= 1e-6, name
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in trained.items())  # B starts at 0: it trained
    saved = load_file(str(ckpt / "model.safetensors"))
    towers = [k for k in saved if k.startswith("adapters.")]
    assert towers and all(".lora_" in k for k in towers)  # only the adapters of the towers
    assert json.loads((ckpt / "base.json").read_text())["path"] == str(base.resolve())
    loaded, _ = load_model(ckpt)
    table = sklearn_digits("test")
    pixels, texts = list(table["image"])[:8], ["a handwritten three.", "the digit seven."]
    for x, y in zip(encode(result.model, pixels, texts), encode(loaded, pixels, texts)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)  # the base as saved, not as round-off left it
    assert main(["lora", "merge", str(ckpt), "--out", str(tmp_path / "merged")]) == 0
    merged, merged_cfg = load_model(tmp_path / "merged")
    assert (
        merged_cfg.model.modalities["image"].lora is None
        and not (resolve_checkpoint(tmp_path / "merged") / "base.json").exists()
    )
    for x, y in zip(encode(loaded, pixels, texts), encode(merged, pixels, texts)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    # the base changed under the adapters: refused, naming it
    (base / "model.safetensors").rename(base / "keep.safetensors")
    try:
        torch.manual_seed(1)
        from safetensors.torch import save_file

        save_file({k: v + 0.01 for k, v in base_state.items()}, str(base / "model.safetensors"))
        with pytest.raises(CheckpointError, match=r"its base .*model.safetensors changed \(sha256"):
            load_model(ckpt)
    finally:
        (base / "keep.safetensors").replace(base / "model.safetensors")


@pytest.mark.parametrize("targets,atol", [(r".*(out_proj|c_fc|c_proj)$", 0.0), (TARGETS, 1e-5)])
def test_a_lora_run_resumes_exactly(base, tmp_path, targets, atol):
    """Exact with linear targets. With nn.MultiheadAttention targets, peft merges the adapter into
    in_proj_weight for each forward and unmerges it after, so the base drifts by float round-off
    (~1e-8) that an adapters-only checkpoint does not keep: the resumed run is then within 1e-5."""
    spec = lora_spec(base)
    for mod in ("image", "text"):
        spec["modalities"][mod]["lora"]["target_modules"] = targets
    whole = train(config(tmp_path, "whole", spec, steps=8)).model.state_dict()
    cfg = config(tmp_path, "halves", spec, steps=8)
    cfg.train.checkpoint_every = 4
    train(cfg, stop_at=4)
    resumed = train(cfg, resume=True).model.state_dict()
    for k, v in whole.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=atol, msg=k)


def test_a_pattern_matching_nothing_lists_the_modules():
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"]["text"]["lora"] = {"target_modules": ["q_proj"]}
    with pytest.raises(
        ConfigError,
        match=r"lora.target_modules': \['q_proj'\] matches no module .*: tower.transformer.resblocks.0.attn",
    ):
        AlignModel(ModelConfig(**spec))


def test_lora_fits_our_own_towers_too():
    """The audio transformer and the GNN: every linear layer adapted, only the adapters train."""
    from tests.data.test_streaming import TINY_AST
    from tests.model.test_locking import GRAPH

    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"] = {"audio": {"options": dict(TINY_AST)}, "graph": {"options": GRAPH}}
    plain = AlignModel(ModelConfig(**spec))
    for mod in ("audio", "graph"):
        names = [n for n, m in plain.adapters[mod].named_modules() if isinstance(m, torch.nn.Linear)]
        regex = "(" + "|".join(re.escape(n) for n in names) + ")"  # peft full-matches a regex string
        spec["modalities"][mod]["lora"] = {"target_modules": regex, "r": 2}
    model = AlignModel(ModelConfig(**spec))
    for mod in ("audio", "graph"):
        train = [n for n, p in model.adapters[mod].named_parameters() if p.requires_grad]
        assert train and all(".lora_" in n for n in train), mod
    from align.model.align_model import raw_encoder

    model.eval()
    assert raw_encoder(model, "graph")(["CCO", "c1ccccc1"]).shape == (2, spec["embed_dim"])
