"""Low-rank adapters on any tower (``model.modalities.<m>.lora``) through peft's
``inject_adapter_in_model``: the tower's own modules are wrapped in place (open_clip's
``nn.MultiheadAttention`` included, which peft handles from 0.14), so the adapter keeps its contract
and every align path (encode, cache, serve) works unchanged. In a LoRA tower only the ``lora_``
tensors train; its head trains as usual.

Names. peft moves a wrapped module's own tensors under ``base_layer`` (``mlp.c_fc.weight`` becomes
``mlp.c_fc.base_layer.weight``); ``base_key`` maps such a name back to the plain model's, which is how
``model.init_from`` loads a plain checkpoint into a LoRA model and how a merged model is saved.

Checkpoints of a LoRA run that starts from ``model.init_from`` hold only the LoRA towers' ``lora_``
tensors (plus every other tower, the heads and the temperature) and ``base.json``: the base
checkpoint's path and the sha256 of its weights. Loading reads the base, refuses it if its sha256
changed, and puts the adapters on top (``align.model.checkpoint.load_weights``).
``align lora merge`` folds the adapters into the weights (peft's ``merge``) and writes a plain
checkpoint of the same architecture without ``lora``.
"""

from __future__ import annotations

import re

from torch import nn

from align.errors import ConfigError
from align.extras import require_extra


def base_key(name: str) -> str:
    """``...c_fc.base_layer.weight`` -> ``...c_fc.weight`` (the name in a model without LoRA)."""
    return name.replace(".base_layer", "")


def is_lora_key(name: str) -> bool:
    return ".lora_" in name


def lora_modalities(model_cfg) -> list[str]:
    return [m for m, spec in model_cfg.modalities.items() if spec.lora is not None]


def apply_lora(adapter: nn.Module, spec, key: str) -> None:
    """Inject LoRA layers into ``adapter`` as ``spec`` (a ``LoraSpec``) says; freeze the rest of it."""
    require_extra("lora", ("peft",), f"config key '{key}'")
    from peft import LoraConfig, inject_adapter_in_model

    options = {"r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_dora": spec.dora}
    config = LoraConfig(target_modules=spec.target_modules, **options)
    try:
        inject_adapter_in_model(config, adapter)
    except ValueError as e:
        names = [n for n, m in adapter.named_modules() if n and isinstance(m, (nn.Linear, nn.MultiheadAttention))]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        raise ConfigError(
            f"config key '{key}.target_modules': {spec.target_modules!r} matches no module peft can adapt "
            f"({str(e).splitlines()[0][:160]}); the tower's linear and attention modules: {shown}"
        ) from None
    for name, p in adapter.named_parameters():
        p.requires_grad_(is_lora_key(name))
    keep_lora_in_inference(adapter)


def keep_lora_in_inference(adapter: nn.Module) -> None:
    """In eval mode under ``no_grad``, ``nn.TransformerEncoderLayer`` (the trunk of our audio,
    point-cloud and video transformers) runs one fused kernel on its own ``in_proj_weight`` /
    ``linear1.weight`` / ... and never calls its children, so LoRA layers inside it were skipped:
    measured on the tiny AST with LoRA on ``self_attn`` / ``linear1`` / ``linear2``, eval embeddings
    were the base model's (0.57 max difference from the same input in train mode). torch leaves that
    fast path for a layer with a forward hook in it (its documented condition), so each such layer
    that holds a LoRA layer gets a no-op pre-hook; a merged model has none and keeps the fast path."""
    from peft.tuners.lora import LoraLayer

    for module in adapter.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and any(isinstance(m, LoraLayer) for m in module.modules()):
            module.register_forward_pre_hook(_through_children)


def _through_children(module: nn.Module, args: tuple) -> None:
    """No-op: its presence makes ``nn.TransformerEncoderLayer`` call its (LoRA-wrapped) children."""
    return None


def merge_lora(model) -> dict:
    """The model's weights with every LoRA layer folded in, named as in a model without LoRA."""
    import torch
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and not module.merged:  # an MHA's merge merges its out_proj too
                module.merge()
    return {base_key(k): v for k, v in model.state_dict().items() if not is_lora_key(k)}


def adapter_only(state: dict, model_cfg) -> dict:
    """What a LoRA run's checkpoint keeps: everything but the LoRA towers' base tensors."""
    mods = lora_modalities(model_cfg)
    prefix = re.compile(rf"^(adapters|momentum\.adapters)\.({'|'.join(map(re.escape, mods))})\.")
    return {k: v for k, v in state.items() if is_lora_key(k) or not prefix.match(k)}
