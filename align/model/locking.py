"""Which parameters of a tower train: one mechanism for every modality (``model.modalities.<m>.lock``).

open_clip locks the image tower by "groups" (``--lock-image-unlocked-groups``) and HF text towers by
layer; each knows its own tower. Here a tower's groups are found structurally, so the same option
works for an open_clip ViT, an HF encoder, our audio / point-cloud / video transformers and a GNN:
the tower's largest ``nn.ModuleList`` (its blocks: ``resblocks``, ``encoder.layer``, ``layers``,
``convs``) gives one group per block, everything registered before the first block (embeddings,
patch projection, stems) is the first group, and everything after the last (final norm, projection,
pooling) the last. ``unlocked_groups: N`` trains the last N groups, so ``1`` trains only what follows
the blocks and ``2`` also the last block (open_clip groups ``ln_post`` with the last block and
``proj`` alone; here both follow the blocks, one group).

The steps, in order: ``all`` freezes the tower; ``unlocked_groups`` freezes all but the last N
groups; ``patterns`` freeze matching parameters; ``bitfit`` trains only biases and normalisation
parameters (BitFit); ``unlock_patterns`` make matching parameters trainable again; ``head`` freezes
the modality's projection head too. A pattern that matches nothing is an error listing the names
that exist. A tower left with no trainable parameter is frozen the way ``options.freeze`` freezes
one (``layers.freeze_``: eval mode, so its feature cache applies).
"""

from __future__ import annotations

import re

from torch import nn

from align.errors import ConfigError
from align.modalities.layers import freeze_, is_frozen

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d)


def _blocks(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The largest ``nn.ModuleList`` (by parameter count) inside ``module``: its blocks."""
    best, size = None, 0
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub):
            n = sum(p.numel() for p in sub.parameters())
            if n > size:
                best, size = (name, sub), n
    return best


def parameter_groups(module: nn.Module) -> list[list[str]]:
    """``module``'s parameter names in groups, first to last: before the blocks, one per block, after."""
    names = [n for n, _ in module.named_parameters()]
    found = _blocks(module)
    if found is None:
        return [names]
    prefix, blocks = found
    prefix = f"{prefix}." if prefix else ""
    per_block: list[list[str]] = [[] for _ in blocks]
    before, after, seen_block = [], [], False
    for n in names:
        rest = n[len(prefix) :] if n.startswith(prefix) else None
        head = rest.split(".", 1)[0] if rest is not None else None
        if head is not None and head.isdigit() and int(head) < len(blocks):
            per_block[int(head)].append(n)
            seen_block = True
        elif seen_block or _output_projection(n, prefix):
            after.append(n)
        else:
            before.append(n)
    return [g for g in [before, *per_block, after] if g]


def _output_projection(name: str, blocks_prefix: str) -> bool:
    """A projection held as a bare parameter of a module enclosing the blocks (open_clip's ``proj``
    and ``text_projection``): registered before them, applied after them, so in the last group."""
    owner, _, leaf = name.rpartition(".")
    return "proj" in leaf and (blocks_prefix.startswith(owner + ".") or not owner)


def _matching(names: list[str], patterns: list[str], key: str) -> set[str]:
    out: set[str] = set()
    for i, pattern in enumerate(patterns):
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config key '{key}[{i}]': {pattern!r} is not a regular expression: {e}") from None
        hits = {n for n in names if rx.search(n)}
        if not hits:
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            raise ConfigError(f"config key '{key}[{i}]': {pattern!r} matches no parameter; they are: {shown}")
        out |= hits
    return out


def _norm_or_bias(module: nn.Module) -> set[str]:
    out = {n for n, _ in module.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
    for mname, sub in module.named_modules():
        is_norm = isinstance(sub, NORMS) or type(sub).__name__.lower().endswith(("norm", "rmsnorm"))
        if is_norm:
            out |= {f"{mname}.{n}" if mname else n for n, _ in sub.named_parameters(recurse=False)}
    return out


def apply_lock(adapter: nn.Module, head: nn.Module, lock, key: str) -> None:
    """Set ``requires_grad`` on ``adapter`` (and ``head``) as the ``LockSpec`` ``lock`` says."""
    params = dict(adapter.named_parameters())
    names = list(params)
    frozen: set[str] = set()
    if lock.all:
        frozen = set(names)
    if lock.unlocked_groups is not None:
        groups = parameter_groups(adapter)
        if lock.unlocked_groups > len(groups):
            raise ConfigError(
                f"config key '{key}.unlocked_groups': {lock.unlocked_groups} groups asked, the tower has "
                f"{len(groups)} (before its blocks, {len(groups) - 2} blocks, after them)"
            )
        keep = len(groups) - lock.unlocked_groups
        frozen |= {n for g in groups[:keep] for n in g}
    frozen |= _matching(names, lock.patterns, f"{key}.patterns")
    if lock.bitfit:
        frozen |= set(names) - _norm_or_bias(adapter)
    frozen -= _matching(names, lock.unlock_patterns, f"{key}.unlock_patterns")
    for n, p in params.items():
        p.requires_grad_(n not in frozen and p.requires_grad)
    if params and is_frozen(adapter):
        freeze_(adapter)  # nothing trains: eval mode and the frozen-feature cache, as options.freeze
    if lock.head:
        for p in head.parameters():
            p.requires_grad_(False)


def trainable_report(model) -> str:
    """``image: 1.20 M of 5.31 M parameters train (22.6%)`` per tower (its head included)."""
    lines = []
    for mod in model.adapters:
        ps = [*model.adapters[mod].parameters(), *model.heads[mod].parameters()]
        total = sum(p.numel() for p in ps)
        train = sum(p.numel() for p in ps if p.requires_grad)
        share = f" ({100 * train / total:.1f}%)" if total else ""
        lines.append(f"  {mod}: {train / 1e6:.2f} M of {total / 1e6:.2f} M parameters train{share}")
    return "trainable parameters per tower:\n" + "\n".join(lines)
