"""Shared test helpers. Keep this light: it is imported for every test file."""

from __future__ import annotations

import copy

import pytest

from tests.support.tiny import TINY_MODALITIES


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
