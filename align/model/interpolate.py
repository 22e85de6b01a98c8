"""Weight-space interpolation of two checkpoints of one architecture (WiSE-FT, Wortsman et al. 2022:
``theta(alpha) = (1 - alpha) * theta_from + alpha * theta_to``, the zero-shot model at alpha 0 and the
fine-tuned one at 1; the paper's curves gain 2-10 points out of distribution at equal accuracy in
distribution for alpha in about 0.3-0.7).

Only floating-point tensors are mixed; integer buffers (counters, queue positions) are taken from
``to``. Two checkpoints fit when they hold the same tensor names with the same shapes; the first that
differs is named.
"""

from __future__ import annotations

import torch


class ArchitectureMismatch(ValueError):
    """The two checkpoints are not one architecture; the message names the first differing tensor."""


def check_same_architecture(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names=("--from", "--to")) -> None:
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            where = names[0] if key not in a else names[1]
            raise ArchitectureMismatch(
                f"tensor '{key}' is missing from {where}: the checkpoints are different architectures"
            )
        if tuple(a[key].shape) != tuple(b[key].shape):
            raise ArchitectureMismatch(
                f"tensor '{key}' is {tuple(a[key].shape)} in {names[0]} but {tuple(b[key].shape)} in {names[1]}"
            )


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` for every floating tensor (computed in float32, cast back),
    ``b``'s value for the others."""
    check_same_architecture(a, b)
    out = {}
    for key, vb in b.items():
        va = a[key]
        if vb.is_floating_point():
            out[key] = ((1 - alpha) * va.float() + alpha * vb.float()).to(vb.dtype)
        else:
            out[key] = vb.clone()
    return out
