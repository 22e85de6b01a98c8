"""``build_loss``: a loss by name (``LOSSES``), dense or tiled, from its options.

Its own module so neither loss module imports the other: ``tiled`` builds on ``losses``, and this
factory picks between them.
"""

from __future__ import annotations

import inspect

from torch import nn

from align.errors import ConfigError
from align.objectives.tiled import TILED
from align.registry import LOSSES


def tiling_mode(mode: str, global_batch: int, tile_above: int) -> str:
    """``model.loss_tiling`` resolved for a global batch: 'auto' below ``tile_above`` is 'off'."""
    return "off" if mode == "auto" and global_batch < tile_above else mode


def build_loss(name: str, tiling: str = "off", tile_size: int = 1024, **kwargs) -> nn.Module:
    """The loss ``name`` (``LOSSES``); with ``tiling`` 'on' / 'auto' its tiled form
    (``align.objectives.tiled.TILED``, same values, no [B, B] logits). 'on' for a loss without a tiled
    form is a ``ConfigError``; 'auto' then falls back to the dense loss."""
    cls = LOSSES.get(name)
    if tiling != "off":
        if name in TILED:
            cls = TILED[name]
            kwargs["tile_size"] = tile_size
        elif tiling == "on":
            raise ConfigError(
                f"config key 'model.loss_tiling': loss '{name}' has no tiled form (tiled: "
                f"{', '.join(sorted(TILED))}); set model.loss_tiling to 'auto' or 'off'"
            )
    if "local_loss" not in inspect.signature(cls).parameters:  # SigLIP has no local_loss option
        kwargs.pop("local_loss", None)
    return cls(**kwargs)
