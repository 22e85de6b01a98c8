"""Image and text adapters: loading open_clip towers (named + local checkpoint), towers built from
config, HF text encoders with mean/CLS pooling, raw-sample preprocessing and the adapter registry.

Everything is built locally (tiny open_clip config registered from tmp, tiny BERT saved to tmp);
nothing downloads.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from align.errors import SampleError
from align.modalities import build_adapter
from align.registry import ADAPTERS

REPO = Path(__file__).resolve().parents[2]

TINY_VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


# --------------------------------------------------------------------------------------------
# open_clip model by name + local pretrained checkpoint
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["gelu", "quickgelu"])
def named_clip(request, tmp_path_factory):
    """A tiny classic-CLIP config registered under a unique name, its perturbed weights saved to a
    .pt file. The registration (open_clip global state) is undone at teardown."""
    import open_clip
    from open_clip import factory

    quick_gelu = request.param
    name = f"align-test-tiny-{uuid.uuid4().hex[:8]}"
    d = tmp_path_factory.mktemp("openclip_cfg")
    cfg_file = d / f"{name}.json"
    cfg = {"embed_dim": 24, "quick_gelu": quick_gelu, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT}
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_file)
    try:
        assert name in open_clip.list_models()
        torch.manual_seed(1234)
        clip = open_clip.create_model(name)
        assert type(clip).__name__ == "CLIP"  # classic CLIP: text tower inline
        # perturb every weight so defaults (LayerNorm = 1/0, zero biases) are not what we compare
        gen = torch.Generator().manual_seed(99)
        with torch.no_grad():
            for p in clip.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        clip.eval()
        ckpt = d / "tiny_clip.pt"
        torch.save(clip.state_dict(), ckpt)
        saved = torch.load(ckpt, weights_only=True)
        yield {"name": name, "file": str(ckpt), "clip": clip, "saved": saved}
    finally:
        if cfg_file in factory._MODEL_CONFIG_PATHS:
            factory._MODEL_CONFIG_PATHS.remove(cfg_file)
        factory._MODEL_CONFIGS.pop(name, None)


def test_image_adapter_named_model_loads_local_checkpoint(named_clip):
    adapter = build_adapter("image", {"model": named_clip["name"], "pretrained": named_clip["file"]})
    adapter.eval()
    visual = {k[len("visual.") :]: v for k, v in named_clip["saved"].items() if k.startswith("visual.")}
    tower = adapter.tower.state_dict()
    assert set(tower) == set(visual)
    for k, v in visual.items():
        assert torch.equal(tower[k], v), k
    assert adapter.feature_dim == 24
    assert adapter.image_size == 32

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = adapter(x)
        ref = named_clip["clip"].encode_image(x)
    assert ours.shape == (3, 24)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)

    # its preprocessor gives tensors the tower accepts
    pre = adapter.preprocessor()
    img = pre(np.full((40, 30, 3), 128, np.uint8), train=False)
    assert img.shape == (3, 32, 32)


def test_image_adapter_named_model_without_checkpoint_differs(named_clip):
    """Control: without 'pretrained' the weights are a fresh init, not the saved ones, so the
    equality above really comes from the checkpoint."""
    adapter = build_adapter("image", {"model": named_clip["name"]})
    visual = named_clip["saved"]["visual.conv1.weight"]
    assert not torch.equal(adapter.tower.state_dict()["conv1.weight"], visual)


def test_text_adapter_named_model_matches_encode_text(named_clip):
    import open_clip

    adapter = build_adapter("text", {"model": named_clip["name"], "pretrained": named_clip["file"]})
    adapter.eval()
    saved = named_clip["saved"]
    tower = adapter.tower.state_dict()
    for k, v in tower.items():
        assert k in saved, f"tower weight {k} has no counterpart in the CLIP checkpoint"
        assert torch.equal(v, saved[k]), k
    # every text weight of the classic CLIP ended up in the tower
    text_keys = {k for k in saved if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
    assert text_keys <= set(tower)
    assert adapter.feature_dim == 24

    captions = ["a photo of the number seven.", "a cat", "the digit zero written by hand, very long " * 3]
    pre = adapter.preprocessor()
    tokens = pre.collate([pre(c, train=False) for c in captions])
    assert tokens.shape == (3, TINY_TEXT["context_length"])
    assert torch.equal(tokens, open_clip.get_tokenizer(named_clip["name"])(captions))
    with torch.no_grad():
        ours = adapter(tokens)
        ref = named_clip["clip"].encode_text(tokens)
    assert ours.shape == (3, 24)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# image adapter from vision_cfg + preprocessing of raw samples
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg_image_adapter():
    torch.manual_seed(0)
    return build_adapter("image", {"vision_cfg": TINY_VISION, "output_dim": 20}).eval()


def _picture() -> np.ndarray:
    """A real handwritten digit (sklearn), upscaled and coloured so channels differ."""
    from sklearn.datasets import load_digits

    d = load_digits().images[7]  # 8x8, values 0..16
    g = np.kron((d * 255.0 / 16.0).round(), np.ones((3, 4))).astype(np.uint8)  # 24x32
    return np.stack([g, 255 - g, g // 2], axis=-1)


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_image_adapter_from_vision_cfg_output_shape(cfg_image_adapter):
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out = cfg_image_adapter(x)
    assert out.shape == (5, 20)
    assert cfg_image_adapter.feature_dim == 20
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        cfg_image_adapter(torch.randn(5, 1, 32, 32))


def test_image_preprocessor_same_picture_any_format(cfg_image_adapter, tmp_path):
    from PIL import Image

    arr = _picture()
    data = _png_bytes(arr)
    path = tmp_path / "digit.png"
    path.write_bytes(data)
    pre = cfg_image_adapter.preprocessor()

    ref = pre(arr, train=False)
    assert ref.shape == (3, 32, 32) and ref.dtype == torch.float32
    samples = {
        "str path": str(path),
        "Path": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "PIL": Image.fromarray(arr),
        "PIL RGBA": Image.fromarray(arr).convert("RGBA"),
        "hf dict bytes": {"bytes": data, "path": None},
        "hf dict bytes+path": {"bytes": data, "path": "digit.png"},
        "hf dict path": {"bytes": None, "path": str(path)},
        "float array 0..1": arr.astype(np.float32) / 255.0,
        "torch tensor HWC": torch.from_numpy(arr),
    }
    for what, raw in samples.items():
        got = pre(raw, train=False)
        torch.testing.assert_close(got, ref, rtol=0, atol=0, msg=lambda m: f"{what}: {m}")
    # eval is deterministic; the picture is not a blank one (so equality is meaningful)
    assert ref.std() > 0.1
    # training transform still gives the right shape (random resized crop)
    assert pre(str(path), train=True).shape == (3, 32, 32)


def test_image_preprocessor_grayscale_to_three_channels(cfg_image_adapter, tmp_path):
    from PIL import Image

    gray = _picture()[..., 0]
    pre = cfg_image_adapter.preprocessor()
    mean = torch.tensor(cfg_image_adapter.mean).view(3, 1, 1)
    std = torch.tensor(cfg_image_adapter.std).view(3, 1, 1)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    outs = [
        pre(gray, train=False),
        pre(gray[..., None], train=False),
        pre(str(path), train=False),
        pre(Image.fromarray(gray, mode="L"), train=False),
    ]
    for out in outs:
        assert out.shape == (3, 32, 32)
        pixels = out * std + mean  # undo normalisation: all channels carry the same gray values
        torch.testing.assert_close(pixels[0], pixels[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(pixels[0], pixels[2], atol=1e-5, rtol=0)
        torch.testing.assert_close(out, outs[0], atol=0, rtol=0)


def test_corrupt_image_file_names_the_path(cfg_image_adapter, tmp_path):
    pre = cfg_image_adapter.preprocessor()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG this is not really an image" * 8)
    for raw in (str(bad), bad, {"bytes": None, "path": str(bad)}):
        with pytest.raises(SampleError) as info:
            pre(raw, train=False)
        assert str(bad) in str(info.value)
    # truncated real PNG
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(_png_bytes(_picture())[:60])
    with pytest.raises(SampleError, match=re.escape(str(trunc))):
        pre(str(trunc), train=False)
    # missing file
    missing = tmp_path / "missing.png"
    with pytest.raises(SampleError, match=re.escape(str(missing))):
        pre(str(missing), train=False)
    # garbage bytes in a HF dict name the path the dict carries
    with pytest.raises(SampleError, match="shard/7.png"):
        pre({"bytes": b"garbage", "path": "shard/7.png"}, train=False)
    with pytest.raises(SampleError):
        pre(b"garbage", train=False)
    with pytest.raises(SampleError):
        pre({"bytes": None, "path": None}, train=False)


@pytest.mark.parametrize("shape", [(3, 32, 32), (32,), (2, 2, 2, 3), (10, 10, 2), (10, 10, 5)])
def test_wrong_shaped_array_is_sample_error(cfg_image_adapter, shape):
    pre = cfg_image_adapter.preprocessor()
    with pytest.raises(SampleError, match="shape"):
        pre(np.zeros(shape, np.uint8), train=False)


def test_unreadable_type_is_sample_error(cfg_image_adapter):
    with pytest.raises(SampleError, match="int"):
        cfg_image_adapter.preprocessor()(12, train=False)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_unknown_adapter_lists_known_names():
    ADAPTERS.get("image"), ADAPTERS.get("text")
    for bad in ("imag", "no-such-adapter"):
        with pytest.raises(KeyError) as info:
            build_adapter(bad, {})
        msg = str(info.value)
        assert bad in msg and "'image'" in msg and "'text'" in msg


def test_registry_imports_adapters_lazily():
    code = (
        "import sys\n"
        "import align.modalities as modalities\n"
        "assert 'align.modalities.image' not in sys.modules, 'imported eagerly'\n"
        "assert 'image' not in modalities.ADAPTERS\n"
        "cls = modalities.ADAPTERS.get('image')\n"
        "assert 'align.modalities.image' in sys.modules and cls.__name__ == 'ImageAdapter'\n"
        "assert 'image' in modalities.ADAPTERS\n"
        "assert modalities.ADAPTERS.get('text').__name__ == 'TextAdapter'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_registry_register_conflict():
    from align.registry import Registry

    reg = Registry("widget")

    @reg.register("a")
    class A:
        pass

    reg.register("a")(A)  # same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))
    assert reg.get("a") is A and reg.names() == ["a"]
    with pytest.raises(KeyError, match=r"known: \['a'\]"):
        reg.get("b")
