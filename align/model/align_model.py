"""AlignModel: modality adapters -> per-modality projection heads -> one L2-normalised space.

Scores between embeddings come from one API, ``AlignModel.score``, so a number always says which
of three things it is:

* ``"cosine"``      raw cosine similarity in [-1, 1] (what retrieval ranks by);
* ``"logits"``      ``exp(logit_scale) * cosine (+ logit_bias for SigLIP)``, what the loss saw;
* ``"probability"`` as the loss turns logits into probabilities (its class's ``probability``):
                    CLIP: softmax of the logits over the candidates (each row sums to 1);
                    SigLIP: sigmoid of the logits, an independent match probability per pair.

The initial temperature and bias come from the loss class too (``init_logit_scale`` /
``init_logit_bias``, looked up by name in ``align.registry.LOSSES``), unless the config sets them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from align.config.schema import ModelConfig
from align.errors import ConfigError, SampleError
from align.modalities import build_adapter
from align.modalities.base import ModalityAdapter
from align.modalities.layers import is_frozen
from align.model.cached import CachedFeatures
from align.model.locking import apply_lock
from align.model.lora import apply_lora
from align.model.momentum import MomentumTowers
from align.registry import ADAPTERS, LOSSES

MAX_LOGIT_SCALE = math.log(100.0)


def build_head(kind: str, in_dim: int, out_dim: int, key: str) -> nn.Module:
    if kind == "identity":
        if in_dim != out_dim:
            raise ConfigError(
                f"config key '{key}': identity head needs the adapter's feature dim "
                f"({in_dim}) to equal model.embed_dim ({out_dim})"
            )
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    raise ConfigError(f"config key '{key}': unknown head '{kind}'")


class AlignModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim: int | None = None  # encode only the first output_dim dims (Matryoshka), None = all
        self.adapters = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for mod, spec in cfg.modalities.items():
            adapter = build_adapter(spec.adapter_name(mod), spec.options)
            self.adapters[mod] = adapter
            self.heads[mod] = build_head(spec.head, adapter.feature_dim, cfg.embed_dim, f"model.modalities.{mod}.head")
            if spec.lock is not None:
                apply_lock(adapter, self.heads[mod], spec.lock, f"model.modalities.{mod}.lock")
            if spec.lora is not None:
                apply_lora(adapter, spec.lora, f"model.modalities.{mod}.lora")
        self.momentum = None
        if cfg.momentum is not None:  # EMA towers and queues (align.model.momentum), saved with the model
            mc = cfg.momentum
            self.momentum = MomentumTowers(
                self.adapters, self.heads, cfg.embed_dim, mc.queue_size, mc.momentum, mc.distill
            )
        loss = LOSSES.get(cfg.loss)  # its temperature / bias to start from, its probability kind
        if loss.probability not in ("softmax", "sigmoid"):
            raise ConfigError(
                f"config key 'model.loss': loss '{cfg.loss}' has probability "
                f"{loss.probability!r}; it must be 'softmax' or 'sigmoid'"
            )
        self.probability = loss.probability
        scale = cfg.init_logit_scale if cfg.init_logit_scale is not None else loss.init_logit_scale
        # shape [1], not a scalar: FSDP2's fully_shard refuses 0-d parameters (the losses get scalars)
        self.logit_scale = nn.Parameter(torch.full((1,), float(scale)), requires_grad=cfg.learn_logit_scale)
        bias = cfg.init_logit_bias if cfg.init_logit_bias is not None else loss.init_logit_bias
        self.logit_bias = nn.Parameter(torch.full((1,), float(bias))) if bias is not None else None
        pairs = cfg.pair_temperatures if isinstance(cfg.pair_temperatures, list) else []
        # one temperature per aligned pair (model.pair_temperatures), initialised like the shared one
        self.pair_logit_scales = (
            nn.ParameterDict(
                {
                    f"{a}|{b}": nn.Parameter(torch.full((1,), float(scale)), requires_grad=cfg.learn_logit_scale)
                    for a, b in pairs
                }
            )
            if pairs
            else None
        )

    def pair_scale(self, a: str, b: str) -> torch.Tensor:
        """exp(temperature) for the pair (a, b): its own with ``model.pair_temperatures``, else the shared one."""
        if self.pair_logit_scales is not None:
            for key in (f"{a}|{b}", f"{b}|{a}"):
                if key in self.pair_logit_scales:
                    return self.pair_logit_scales[key].exp().reshape(())
        return self.logit_scale.exp().reshape(())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("logit_scale", "logit_bias"):  # checkpoints written before they became [1]
            key = prefix + name
            if key in state_dict and state_dict[key].dim() == 0:
                state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def modalities(self) -> list[str]:
        return list(self.adapters)

    def set_grad_checkpointing(self, enable: bool = True) -> dict[str, list[str]]:
        """``train.grad_checkpointing``: each trainable tower recomputes its activations in the
        backward pass (a frozen one keeps none). Returns modality -> the blocks switched."""
        return {mod: a.set_grad_checkpointing(enable) for mod, a in self.adapters.items() if not is_frozen(a)}

    def train(self, mode: bool = True) -> "AlignModel":
        """Like ``nn.Module.train``, but a frozen tower (``layers.freeze_``) stays in eval mode."""
        super().train(mode)
        for module in self.modules():
            if module is not self and getattr(module, "align_frozen", False) and is_frozen(module):
                module.eval()
        return self

    def preprocessors(self) -> dict[str, Any]:
        return {mod: adapter.preprocessor() for mod, adapter in self.adapters.items()}

    def tower_parameters(self, modality: str) -> list[nn.Parameter]:
        """The parameters of one modality's tower: its adapter and its head."""
        return [*self.adapters[modality].parameters(), *self.heads[modality].parameters()]

    def encode(self, modality: str, batch: Any) -> torch.Tensor:
        """Unit-norm embeddings [B, embed_dim] for a collated batch of one modality (or a frozen
        tower's ``CachedFeatures``, which only go through the head)."""
        if modality not in self.adapters:
            raise KeyError(f"model has no modality '{modality}'; it has {self.modalities}")
        features = batch.features if isinstance(batch, CachedFeatures) else self.adapters[modality](batch)
        out = self.heads[modality](features)
        if self.output_dim is not None:  # a Matryoshka prefix (eval.dim, index build --dim), re-normalised
            out = out[..., : self.output_dim]
        return F.normalize(out, dim=-1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {mod: self.encode(mod, value) for mod, value in batch.items() if mod in self.adapters}

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the temperature in [0, ln 100] (open_clip clamps after every optimizer step)."""
        self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        for p in (self.pair_logit_scales or {}).values():
            p.clamp_(0, MAX_LOGIT_SCALE)

    def score(
        self, a: torch.Tensor, b: torch.Tensor, kind: Literal["cosine", "logits", "probability"] = "cosine"
    ) -> torch.Tensor:
        """Score every row of ``a`` against every row of ``b`` (both unit-norm embeddings)."""
        cos = a @ b.T
        if kind == "cosine":
            return cos
        logits = self.logit_scale.exp() * cos
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        if kind == "logits":
            return logits
        if kind == "probability":
            return torch.sigmoid(logits) if self.probability == "sigmoid" else logits.softmax(dim=-1)
        raise ValueError(f"unknown score kind '{kind}' (cosine, logits, probability)")


def fit_adapters(cfg: ModelConfig, columns: dict[str, str], table) -> dict[str, list[str]]:
    """Let each adapter learn what it needs from the training table before the model is built
    (``ModalityAdapter.fit``: normalisation statistics, vocabularies, input widths) and write it
    into ``cfg``'s options, so the run's config.yaml and every checkpoint carry it. Options the
    user set are kept (an option set to ``"fit"`` asks for the fitted value). Returns modality -> the
    option names that were fitted."""
    fitted = {}
    for mod, spec in cfg.modalities.items():
        cls = ADAPTERS.get(spec.adapter_name(mod))
        if mod not in columns or cls.fit.__func__ is ModalityAdapter.fit.__func__:
            continue  # nothing to learn: do not read the column
        learned = cls.fit(cls.Options.model_validate(spec.options), list(table[columns[mod]]))
        learned = {k: v for k, v in learned.items() if spec.options.get(k) in (None, "fit")}
        if learned:
            spec.options = cls.Options.model_validate({**spec.options, **learned}).model_dump(by_alias=True)
            fitted[mod] = sorted(learned)
    return fitted


def contrastive_loss(
    model: AlignModel, embeddings: dict[str, torch.Tensor], pairs: list[tuple[str, str]], loss_fn: nn.Module
) -> torch.Tensor:
    """Mean of the pairwise loss over the configured modality pairs."""
    scale = model.logit_scale.exp().reshape(())  # the losses take scalars, as open_clip's do
    bias = None if model.logit_bias is None else model.logit_bias.reshape(())
    losses = [loss_fn(embeddings[a], embeddings[b], scale, bias) for a, b in pairs]
    return torch.stack(losses).mean()


def raw_encoder(model, modality: str) -> Callable[[list], torch.Tensor]:
    """``f(raw samples) -> unit-norm embeddings [n, D]`` with eval preprocessing, on the model's device.
    A sample that cannot be read raises ``SampleError`` naming its position in the list."""
    from accelerate.utils import send_to_device as to_device

    if modality not in model.adapters:
        raise KeyError(f"model has no modality '{modality}'; it has {list(model.adapters)}")
    pre = model.adapters[modality].preprocessor()
    device = next(model.parameters()).device

    def one(i: int, raw):
        try:
            return pre(raw, train=False)
        except (SampleError, OSError, ValueError, TypeError) as err:
            raise SampleError(f"{modality} item {i} ({str(raw)[:80]!r}): {err}") from err

    @torch.no_grad()
    def encode(raws: list, start: int = 0) -> torch.Tensor:
        batch = pre.collate([one(start + i, r) for i, r in enumerate(raws)])
        return model.encode(modality, to_device(batch, device)).float().cpu()

    return encode
