"""GradCache (``train.micro_batch_size``): parameter gradients equal one step whose autograd graph
holds the whole batch, for every modality's tower with its randomness on (dropout, open_clip's
patch dropout, AST dropout), because each micro-batch is re-encoded with the RNG state it first
used; and without randomness they equal the plain full-batch step. Inputs are real samples:
scikit-learn digits (images, clips, point sets), FSDD recordings, ChEBI-20 SMILES, wine rows."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TEXT = {"text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}, "output_dim": 32}
IMAGE = {
    "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16, "patch_dropout": 0.5},
    "output_dim": 32,
}
B = 8


def raws(modality: str) -> list:
    from sklearn.datasets import load_digits, load_wine

    digits = load_digits()
    img = (digits.images[:B] * 16).clip(0, 255).astype(np.uint8)
    if modality == "image":
        return [np.stack([im] * 3, -1) for im in img]
    if modality == "video":
        from align.data.sources.moving_digits import moving_digit_clips

        clips, _ = moving_digit_clips(digits.images[:B], digits.target[:B], frames=4, size=16)
        return [np.stack([c] * 3, -1) for c in clips]
    if modality == "pointcloud":  # each digit's lit pixels as points (x, y, brightness)
        return [np.column_stack([np.argwhere(d > 0), d[d > 0] / 16.0]).astype(np.float64) for d in digits.images[:B]]
    if modality == "tabular":
        return [list(map(float, r)) for r in load_wine().data[:B]]
    if modality == "audio":
        wavs = sorted((DATA / "audio" / "fsdd" / "recordings").glob("*.wav"))[:B]
        if len(wavs) < B:
            pytest.skip("FSDD not found")
        return [str(p) for p in wavs]
    if modality == "graph":
        import csv

        path = DATA / "graph" / "chebi20" / "validation.txt"
        if not path.exists():
            pytest.skip("ChEBI-20 not found")
        with open(path, newline="") as f:
            return [r["SMILES"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:B]
    raise KeyError(modality)


OPTIONS = {
    "image": IMAGE,
    "video": {"image": IMAGE, "frames": 4, "temporal": "transformer", "temporal_layers": 1, "temporal_heads": 2},
    "pointcloud": {
        "encoder": "patch",
        "num_points": 32,
        "num_groups": 8,
        "group_size": 8,
        "width": 32,
        "layers": 1,
        "heads": 2,
        "token_widths": [16, 32],
        "dropout": 0.3,
        "norm": "layer",
    },
    "tabular": {"num_features": 13, "mean": [0.0] * 13, "std": [1.0] * 13, "widths": [32, 32], "dropout": 0.3},
    "audio": {
        "sample_rate": 8000,
        "clip_seconds": 0.5,
        "n_mels": 32,
        "patch_size": 8,
        "patch_stride": 8,
        "width": 32,
        "layers": 1,
        "heads": 2,
        "dropout": 0.3,
    },
    "graph": {
        "encoder": "gin",
        "layers": 2,
        "width": 32,
        "node_vocab": "smiles",
        "edge_vocab": "smiles",
        "dropout": 0.3,
    },
}


def setup(modality: str, options: dict, loss: str = "clip"):
    from accelerate import Accelerator

    from align.config.schema import ModelConfig
    from align.model.align_model import AlignModel
    from align.objectives.factory import build_loss
    from align.objectives.task import ContrastiveTask

    torch.manual_seed(0)
    cfg = ModelConfig(
        embed_dim=16, loss=loss, modalities={modality: {"options": copy.deepcopy(options)}, "text": {"options": TEXT}}
    )
    model = AlignModel(cfg).train()
    pre = model.preprocessors()
    captions = [f"digit number {i}" for i in range(B)]
    batch = {
        modality: pre[modality].collate([pre[modality](r, train=True) for r in raws(modality)]),
        "text": pre["text"].collate([pre["text"](c, train=True) for c in captions]),
        "index": torch.arange(B),
    }
    task = ContrastiveTask(model, build_loss(loss), [(modality, "text")], [modality, "text"])
    return Accelerator(cpu=True), model, task, batch


def assert_same_gradient(got: torch.Tensor, want: torch.Tensor, msg: str) -> None:
    """<= 1e-5 relative, with an absolute floor of 1e-5 x the tensor's largest entry: float32 sums
    of the same terms in another order (micro-batches) differ by rounding of the large entries."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()) + 1e-9, msg=msg)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def gradcache_grads(acc, model, task, batch, micro: int, seed: int = 1):
    from align.training.gradcache import cached_loss

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, backward = cached_loss(acc, model, task, batch, micro)
    backward()
    return loss.item(), grads(model), [b.clone() for b in model.buffers()]


def held_graph_grads(acc, model, task, batch, micro: int, seed: int = 1):
    """The reference: every micro-batch encoded with autograd in one graph, one full-batch loss."""
    from align.training.gradcache import slice_batch

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    inputs = task.inputs(batch)
    parts = [model({m: slice_batch(v, s, s + micro) for m, v in inputs.items()}) for s in range(0, B, micro)]
    loss = task.loss({m: torch.cat([p[m] for p in parts]) for m in parts[0]})
    loss.backward()
    return loss.item(), grads(model), [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("modality", list(OPTIONS))
def test_gradients_equal_the_held_graph_with_randomness_on(modality):
    acc, model, task, batch = setup(modality, OPTIONS[modality])
    state = copy.deepcopy(model.state_dict())
    loss, got, buffers = gradcache_grads(acc, model, task, batch, micro=2)
    model.load_state_dict(state)
    ref_loss, want, ref_buffers = held_graph_grads(acc, model, task, batch, micro=2)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert set(got) == set(want) and any(modality in n for n in got)  # the tower and the text tower train
    for name in want:
        assert_same_gradient(got[name], want[name], name)
    for b, r in zip(buffers, ref_buffers):  # running statistics updated once per micro-batch
        torch.testing.assert_close(b, r)
    # the randomness is real: another seed gives other gradients for the tower
    model.load_state_dict(state)
    _, other, _ = gradcache_grads(acc, model, task, batch, micro=2, seed=2)
    tower = [n for n in want if n.startswith(f"adapters.{modality}.")]
    assert any(not torch.allclose(other[n], want[n]) for n in tower), modality


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_without_randomness_gradients_equal_the_plain_full_batch_step(loss_name):
    """Audio AST (LayerNorm only, dropout 0) <-> text: micro-batches of 2 and 4 against one batch of 8."""
    options = {**OPTIONS["audio"], "dropout": 0.0}
    acc, model, task, batch = setup("audio", options, loss_name)
    state = copy.deepcopy(model.state_dict())
    model.zero_grad(set_to_none=True)
    full = task(model, batch)
    full.backward()
    want = grads(model)
    for micro in (2, 4, 8):
        model.load_state_dict(state)
        loss, got, _ = gradcache_grads(acc, model, task, batch, micro)
        assert loss == pytest.approx(full.item(), rel=1e-6)
        for name in want:
            assert_same_gradient(got[name], want[name], f"{micro}: {name}")


def test_micro_batch_must_divide_the_batch():
    from align.config.schema import config_from_dict
    from align.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.micro_batch_size.*does not divide train\.batch_size 10"):
        config_from_dict(
            {
                "model": {"modalities": {"image": {}, "text": {}}},
                "data": {"train": {"source": "csv", "columns": {"image": "a", "text": "b"}}},
                "train": {"batch_size": 10, "micro_batch_size": 4},
            },
            validate_adapters=False,
        )
