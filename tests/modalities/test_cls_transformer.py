"""The CLS-token transformer trunk AST and the point-patch transformer share
(``align.modalities.layers.ClsTransformer``) builds, names and computes exactly what each tower
built before it was shared: the towers as they were are written out below (``LegacyAST``,
``LegacyPatch``, their code before the block), and with the same seed the shared version draws
bit-identical initial weights under the same names in the same order (checkpoints and resumed
optimizer state load), and with the same weights gives bit-identical embeddings and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from align.modalities.audio import ASTAudioOptions, ASTEncoder
from align.modalities.layers import ClsTransformer, prenorm_transformer
from align.modalities.pointcloud import GroupTokenizer, PatchOptions, PatchTransformer, group_points

AST = ASTAudioOptions(
    n_mels=16, clip_seconds=0.25, patch_size=8, patch_stride=6, width=16, layers=2, heads=2, dropout=0.1
)
PATCH = PatchOptions(
    num_points=64, num_groups=8, group_size=8, token_widths=[8, 16], width=16, layers=2, heads=2, dropout=0.1
)

# the state-dict layout of the towers before the block (what their checkpoints hold), trunk part
AST_KEYS = ["cls", "pos", "patch.weight", "patch.bias"]
PATCH_KEYS = ["cls", "cls_pos", "tokenizer.first.0.weight"]
TRUNK_KEYS = ["blocks.layers.0.self_attn.in_proj_weight", "blocks.layers.1.linear2.bias", "norm.weight", "norm.bias"]


class LegacyAST(nn.Module):
    """modalities/audio.py's ASTEncoder before the shared block."""

    def __init__(self, o: ASTAudioOptions) -> None:
        super().__init__()
        self.input_shape = (o.n_mels, o.frames())
        grid = [(n - o.patch_size) // o.patch_stride + 1 for n in self.input_shape]
        self.patch = nn.Conv2d(1, o.width, o.patch_size, o.patch_stride)
        self.cls = nn.Parameter(torch.zeros(1, 1, o.width))
        self.pos = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], o.width))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(o.dropout)
        self.blocks = prenorm_transformer(o.width, o.heads, o.mlp_ratio, o.dropout, o.layers)
        self.norm = nn.LayerNorm(o.width)
        self.pooling = o.pooling

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.patch(spec.unsqueeze(1)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(self.drop(x)))
        return x[:, 0] if self.pooling == "cls" else x[:, 1:].mean(1)


class LegacyPatch(nn.Module):
    """modalities/pointcloud.py's PatchTransformer before the shared block."""

    def __init__(self, in_ch: int, o: PatchOptions) -> None:
        super().__init__()
        self.num_groups, self.group_size, self.pooling = o.num_groups, o.group_size, o.pooling_mode()
        self.tokenizer = GroupTokenizer(in_ch, o.token_widths, o.width, o.norm)
        self.pos = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, o.width))
        self.cls = nn.Parameter(torch.zeros(1, 1, o.width))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, o.width))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.drop = nn.Dropout(o.dropout)
        self.blocks = prenorm_transformer(o.width, o.heads, o.mlp_ratio, o.dropout, o.layers)
        self.norm = nn.LayerNorm(o.width)
        self.out_dim = o.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres, groups = group_points(x, self.num_groups, self.group_size)
        tokens = self.tokenizer(groups) + self.pos(centres)
        cls = (self.cls + self.cls_pos).expand(len(x), -1, -1)
        h = self.norm(self.blocks(self.drop(torch.cat([cls, tokens], dim=1))))
        if self.pooling == "cls":
            return h[:, 0]
        return h[:, 1:].mean(1) if self.pooling == "mean" else h[:, 1:].amax(1)


def build(kind: str, legacy: bool, pooling: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "audio":
        o = AST.model_copy(update={"pooling": pooling})
        return LegacyAST(o) if legacy else ASTEncoder(o)
    o = PATCH.model_copy(update={"pooling": pooling})
    return LegacyPatch(3, o) if legacy else PatchTransformer(3, o)


def batch(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "audio":
        return torch.randn(3, AST.n_mels, AST.frames(), generator=g)
    return torch.rand(3, PATCH.num_points, 3, generator=g) * 2 - 1


def run(model: nn.Module, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train(train)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout masks
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


CASES = [("audio", "mean"), ("audio", "cls"), ("pointcloud", "cls"), ("pointcloud", "mean"), ("pointcloud", "max")]


@pytest.mark.parametrize("kind, pooling", CASES)
def test_same_seed_same_initial_weights_names_and_order(kind, pooling):
    old, new = build(kind, True, pooling), build(kind, False, pooling)
    assert isinstance(new, ClsTransformer)
    old_params, new_params = list(old.named_parameters()), list(new.named_parameters())
    assert [n for n, _ in new_params] == [n for n, _ in old_params]  # names and order (optimizer state)
    assert list(new.state_dict()) == list(old.state_dict())
    keys = (AST_KEYS if kind == "audio" else PATCH_KEYS) + TRUNK_KEYS
    assert set(keys) <= set(new.state_dict())
    for (name, p), (_, q) in zip(new_params, old_params):
        assert torch.equal(p, q), name
    assert not torch.equal(build(kind, False, pooling, seed=1).cls, new.cls)  # the seed does reach it


@pytest.mark.parametrize("kind, pooling", CASES)
def test_old_checkpoints_load_and_embed_bit_identically(kind, pooling):
    old = build(kind, True, pooling, seed=2)
    with torch.no_grad():  # weights away from the init, so a swapped or dropped tensor shows
        for p in old.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    new = build(kind, False, pooling, seed=5)
    new.load_state_dict(old.state_dict(), strict=True)
    x = batch(kind)
    for train in (False, True):
        want, want_grads = run(old, x, train)
        got, got_grads = run(new, x, train)
        assert torch.equal(got, want), (kind, pooling, train)
        assert got_grads.keys() == want_grads.keys()
        for name in want_grads:
            assert torch.equal(got_grads[name], want_grads[name]), (name, train)
    assert not torch.equal(run(new, x, True)[0], run(new, x, False)[0])  # dropout is on in training


def test_block_refuses_an_unknown_pooling():
    with pytest.raises(ValueError, match="pooling"):
        ClsTransformer({}, width=8, heads=2, mlp_ratio=2.0, dropout=0.0, layers=1, pooling="sum")
