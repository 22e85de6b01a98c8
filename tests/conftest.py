"""Shared test helpers. Keep this light: it is imported for every test file."""
from __future__ import annotations

import copy

import pytest

# A tiny image<->text AlignModel (open_clip towers built from config) that builds in well under
# a second once open_clip is imported. tests/dist_worker.py keeps its own copy of this dict
# because it runs as a standalone script.
TINY_MODALITIES = {
    "image": {"options": {"vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                         "head_width": 16},
                          "output_dim": 32}},
    "text": {"options": {"text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2,
                                      "layers": 1},
                         "output_dim": 32}},
}


@pytest.fixture(scope="session")
def tiny_model_config():
    """Factory: ``tiny_model_config(loss="clip", **overrides) -> ModelConfig``."""
    from align.config.schema import ModelConfig

    def make(loss: str = "clip", **overrides) -> ModelConfig:
        return ModelConfig(embed_dim=16, modalities=copy.deepcopy(TINY_MODALITIES), loss=loss, **overrides)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: OpenMP's spinning threads on a shared 2-core box only slow them down
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
