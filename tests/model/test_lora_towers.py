"""LoRA on our own transformer towers (issue 24 item 2): ``nn.TransformerEncoderLayer``'s inference
fast path used to skip the LoRA layers inside it, so a LoRA audio / point-cloud / video tower encoded
as its base in eval mode. Now eval embeddings equal those with the fast path off and the merged
model's (1e-5), and only ``lora_`` tensors of the tower get gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from align.config.schema import ModelConfig
from align.model.align_model import AlignModel
from tests.data.test_streaming import TINY_AST
from tests.modalities.test_pointcloud import TINY_PATCH
from tests.modalities.test_video import TINY_IMAGE
from tests.support.tiny import DIGITS_MODEL

TARGETS = r".*(self_attn|linear1|linear2)$"  # nn.TransformerEncoderLayer's attention and MLP
TOWERS = {
    "audio": (dict(TINY_AST), lambda: torch.randn(3, 32, 26)),  # mel spectrograms [B, n_mels, frames]
    "pointcloud": (dict(TINY_PATCH), lambda: torch.randn(3, 128, 3)),
    "video": (
        {"image": copy.deepcopy(TINY_IMAGE), "frames": 4, "temporal": "transformer", "temporal_heads": 2},
        lambda: torch.rand(3, 4, 3, 32, 32),
    ),
}


@pytest.mark.parametrize("mod", sorted(TOWERS))
def test_lora_inside_transformer_layers_is_used_in_eval_and_merges(mod):
    from align.model.lora import merge_lora

    options, batch = TOWERS[mod]
    spec = copy.deepcopy(DIGITS_MODEL)
    spec["modalities"] = {mod: {"options": options, "lora": {"target_modules": TARGETS, "r": 4}}}
    torch.manual_seed(0)
    model = AlignModel(ModelConfig(**spec))
    x = batch()
    model.train()
    model.encode(mod, x).sum().backward()
    grads = [n for n, p in model.adapters[mod].named_parameters() if p.grad is not None]
    assert grads and all(".lora_" in n for n in grads)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.5)  # as if trained: B starts at zero
        model.eval()
        inferred = model.encode(mod, x)
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # every module's own forward: the reference
        try:
            reference = model.encode(mod, x)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    torch.testing.assert_close(inferred, reference, rtol=0, atol=1e-5)
    plain_spec = copy.deepcopy(spec)
    plain_spec["modalities"][mod].pop("lora")
    plain = AlignModel(ModelConfig(**plain_spec))
    plain.load_state_dict(merge_lora(model), strict=True)
    plain.eval()
    with torch.no_grad():
        merged = plain.encode(mod, x)
    torch.testing.assert_close(merged, inferred, rtol=0, atol=1e-5)
