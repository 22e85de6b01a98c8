"""Few-shot heads as files: every kind reloads to the same logits, damaged or foreign files and a
model without the head's query modality are refused, class-specific context keeps its classes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from align.config.schema import ModelConfig
from align.model.adapted import (
    AdaptedError,
    LinearHead,
    MetaNet,
    PromptHead,
    TipAdapterHead,
    adapted_files,
    load_adapted,
    save_adapted,
)
from align.model.align_model import AlignModel
from tests.support.tiny import DIGITS_MODEL

NAMES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AlignModel(ModelConfig(**copy.deepcopy(DIGITS_MODEL))).eval()


def heads(model):
    g = torch.Generator().manual_seed(0)
    kw = lambda m: {"method": m, "classnames": NAMES, "query": "image", "info": {"k": 4}}
    zs = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    keys = F.normalize(torch.randn(12, 32, generator=g), dim=-1)
    meta = MetaNet(32, 32)
    yield LinearHead(torch.randn(3, 32, generator=g), torch.randn(3, generator=g), **kw("linear-probe"))
    yield TipAdapterHead(zs, keys, F.one_hot(torch.arange(12) % 3, 3).float(), 2.0, 5.5, **kw("tip-adapter"))
    yield PromptHead(torch.randn(1, 4, 32, generator=g) * 0.02, "text", ".", None, 50.0, **kw("coop")).bind(model)
    yield PromptHead(torch.randn(3, 4, 32, generator=g) * 0.02, "text", ".", None, 50.0, **kw("coop-csc")).bind(model)
    yield PromptHead(torch.randn(1, 4, 32, generator=g) * 0.02, "text", ".", meta, 50.0, **kw("cocoop")).bind(model)


def test_every_kind_reloads_to_the_same_logits(model, tmp_path):
    x = F.normalize(torch.randn(6, 32), dim=-1)
    for head in heads(model):
        path = save_adapted(head, tmp_path / "adapted" / f"{head.method}.safetensors")
        back = load_adapted(path, model)
        assert type(back) is type(head) and back.classnames == NAMES and back.info == {"k": 4}
        with torch.no_grad():
            assert torch.allclose(back.logits(x), head.logits(x), atol=1e-5), head.method
    assert sorted(adapted_files(tmp_path)) == ["cocoop", "coop", "coop-csc", "linear-probe", "tip-adapter"]


def test_shared_context_takes_new_classes_and_class_specific_does_not(model):
    coop, csc = list(heads(model))[2:4]
    x = F.normalize(torch.randn(2, 32), dim=-1)
    with torch.no_grad():
        assert coop.logits(x, names=["three", "four", "five", "six"]).shape == (2, 4)
        with pytest.raises(AdaptedError, match="one context per class"):
            csc.logits(x, names=["three", "four", "five"])


def test_bad_files_are_refused(model, tmp_path):
    head = next(heads(model))
    path = save_adapted(head, tmp_path / "h.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdaptedError, match="cut.safetensors: cannot be read"):
        load_adapted(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AdaptedError, match="not an adapted classifier"):
        load_adapted(tmp_path / "other.safetensors")
    head.query = "audio"
    save_adapted(head, path)
    with pytest.raises(AdaptedError, match="classifies modality 'audio', which the model does not have"):
        load_adapted(path, model)
