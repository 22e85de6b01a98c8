"""Few-shot classifiers on a trained space, as small files beside the checkpoint (inference side).

``align adapt`` (``align.adapt``) fits them; this module holds what is needed to use one: the
heads and their ``logits(query embeddings) -> [N, C]``, and one file format. Each is a few
kilobytes to a few megabytes, so it lives next to ``model.safetensors`` (``<checkpoint>/adapted/``)
and loads with it in ``align serve`` and ``align eval zeroshot --adapter``:

* ``linear``  — logistic regression on the embeddings (linear probe, zero-shot-initialised probe):
                ``x W^T + b``;
* ``tip``     — Tip-Adapter / Tip-Adapter-F (Zhang et al., ECCV 2022): ``100 x Wzs^T + alpha *
                exp(-beta (1 - x K^T)) L``, a cache of the k-shot embeddings K with one-hot labels L
                beside the zero-shot classifier Wzs (K learned in -F);
* ``prompt``  — CoOp / CoCoOp context vectors (``align.model.prompt_context``): class embeddings are
                the prompt tower's encoding of ``[ctx] {class}.``; CoCoOp adds a meta-net's bias,
                computed from each query, to the context. Shared context also classifies class
                names it never saw; class-specific context only its own.

Files are safetensors (tensors + a JSON header, no code runs on load), written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError
from align.io.atomic import write_atomic

FORMAT = "align.adapted/v1"
ADAPTED_DIR = "adapted"


class AdaptedError(AlignError, ValueError):
    """An adapted-classifier file is unreadable, of another format, or does not fit the model."""


class AdaptedClassifier(nn.Module):
    """Base: ``method`` (how it was fitted), ``classnames``, ``query`` (the modality it classifies)."""

    kind = ""

    def __init__(self, method: str, classnames: Sequence[str], query: str, info: dict | None = None) -> None:
        super().__init__()
        self.method, self.classnames, self.query = method, list(classnames), query
        self.info = dict(info or {})

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def header(self) -> dict[str, Any]:
        return {"method": self.method, "classnames": self.classnames, "query": self.query, "info": self.info}


class LinearHead(AdaptedClassifier):
    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, **kw: Any) -> None:
        super().__init__(**kw)
        self.weight = nn.Parameter(weight.float().clone())
        self.bias = nn.Parameter(bias.float().clone())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight.T + self.bias


class TipAdapterHead(AdaptedClassifier):
    kind = "tip"

    def __init__(
        self,
        zeroshot: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        alpha: float,
        beta: float,
        scale: float = 100.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.register_buffer("zeroshot", zeroshot.float().clone())
        self.keys = nn.Parameter(keys.float().clone())
        self.register_buffer("values", values.float().clone())
        self.alpha, self.beta, self.scale = float(alpha), float(beta), float(scale)

    def cache_logits(self, x: torch.Tensor) -> torch.Tensor:
        affinity = x.float() @ F.normalize(self.keys, dim=-1).T
        return torch.exp(-self.beta * (1 - affinity)) @ self.values

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.float() @ self.zeroshot.T + self.alpha * self.cache_logits(x)

    def header(self) -> dict[str, Any]:
        return {**super().header(), "alpha": self.alpha, "beta": self.beta, "scale": self.scale}


class MetaNet(nn.Sequential):
    """CoCoOp's meta-net: query embedding -> a bias added to every context vector."""

    def __init__(self, dim: int, width: int, hidden: int | None = None) -> None:
        hidden = hidden or max(dim // 16, 4)
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))


class PromptHead(AdaptedClassifier):
    """CoOp (``meta`` None) or CoCoOp. Call ``bind(model)`` before ``logits``."""

    kind = "prompt"

    def __init__(
        self,
        ctx: torch.Tensor,
        prompt_modality: str,
        suffix: str = ".",
        meta: MetaNet | None = None,
        scale: float = 100.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.ctx = nn.Parameter(ctx.float().clone())
        self.prompt_modality, self.suffix, self.meta, self.scale = prompt_modality, suffix, meta, float(scale)
        self.encoder = None
        self._cached: tuple[tuple[str, ...], torch.Tensor] | None = None

    @property
    def class_specific(self) -> bool:
        return self.ctx.shape[0] > 1

    def train(self, mode: bool = True) -> "PromptHead":
        self._cached = None  # class embeddings of the context as it was: stale once it trains
        return super().train(mode)

    def bind(self, model: nn.Module) -> "PromptHead":
        from align.model.prompt_context import context_encoder

        self.encoder = context_encoder(model, self.prompt_modality, self.ctx.shape[1], self.suffix)
        if self.encoder.width != self.ctx.shape[2]:
            raise AdaptedError(
                f"context width {self.ctx.shape[2]} does not fit modality '{self.prompt_modality}' "
                f"(token width {self.encoder.width}): the file was fitted on another model"
            )
        self._cached = None
        return self

    def _names(self, names: Sequence[str] | None) -> list[str]:
        names = list(self.classnames if names is None else names)
        if self.class_specific and names != self.classnames:
            raise AdaptedError(
                f"{self.method} learned one context per class ({len(self.classnames)} classes); it cannot "
                "classify other class names (shared context can)"
            )
        return names

    def class_embeddings(self, names: Sequence[str] | None = None) -> torch.Tensor:
        """[C, D] class embeddings with the learned (unconditioned) context."""
        if self.encoder is None:
            raise AdaptedError("PromptHead.bind(model) first: the prompt tower encodes the classes")
        names = self._names(names)
        return self.encoder.encode(names, self.ctx)

    def logits(self, x: torch.Tensor, names: Sequence[str] | None = None, chunk: int = 64) -> torch.Tensor:
        names = self._names(names)
        x = x.float()
        if self.meta is None:
            key = tuple(names)
            if self.training or torch.is_grad_enabled() or self._cached is None or self._cached[0] != key:
                emb = self.class_embeddings(names)
                if not (self.training or torch.is_grad_enabled()):
                    self._cached = (key, emb)
            else:
                emb = self._cached[1]
            return self.scale * x @ emb.T
        out = []
        for start in range(0, len(x), chunk):  # B x C prompts per chunk: each query conditions its own context
            xb = x[start : start + chunk]
            ctx = self.ctx[None] + self.meta(xb)[:, None, None, :]  # [B, 1 or C, M, W]
            ctx = ctx.expand(len(xb), len(names), *ctx.shape[2:]).reshape(-1, *ctx.shape[2:])
            emb = self.encoder.encode(list(names) * len(xb), ctx).reshape(len(xb), len(names), -1)
            out.append(self.scale * torch.einsum("bd,bcd->bc", xb, emb))
        return torch.cat(out)

    def header(self) -> dict[str, Any]:
        meta = None if self.meta is None else {"hidden": self.meta[0].out_features}
        return {
            **super().header(),
            "prompt_modality": self.prompt_modality,
            "suffix": self.suffix,
            "scale": self.scale,
            "meta": meta,
        }


def save_adapted(head: AdaptedClassifier, path: str | Path) -> Path:
    """Write ``head`` as one safetensors file (tensors + JSON header), atomically."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"format": FORMAT, "kind": head.kind, "header": json.dumps(head.header())}
    write_atomic(path, save(tensors, metadata=meta))
    return path


def load_adapted(path: str | Path, model: nn.Module | None = None) -> AdaptedClassifier:
    """Read a file ``save_adapted`` wrote; with ``model``, a prompt head is bound to its tower and
    the query modality is checked against the model's."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 -- a missing, truncated or foreign file: one message
        raise AdaptedError(f"{path}: cannot be read as an adapted classifier ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT:
        raise AdaptedError(f"{path}: not an adapted classifier (format {meta.get('format')!r}, expected {FORMAT})")
    for name, value in tensors.items():
        if not torch.isfinite(value).all():
            raise AdaptedError(f"{path}: tensor '{name}' holds non-finite values")
    h = json.loads(meta["header"])
    kw = {"method": h["method"], "classnames": h["classnames"], "query": h["query"], "info": h.get("info")}
    kind = meta.get("kind")
    if kind == "linear":
        head: AdaptedClassifier = LinearHead(tensors["weight"], tensors["bias"], **kw)
    elif kind == "tip":
        head = TipAdapterHead(
            tensors["zeroshot"], tensors["keys"], tensors["values"], h["alpha"], h["beta"], h["scale"], **kw
        )
    elif kind == "prompt":
        meta_net = None
        if h.get("meta"):
            meta_net = MetaNet(tensors["meta.0.weight"].shape[1], tensors["ctx"].shape[2], h["meta"]["hidden"])
        head = PromptHead(tensors["ctx"], h["prompt_modality"], h["suffix"], meta_net, h["scale"], **kw)
        if meta_net is not None:
            meta_net.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("meta.")})
    else:
        raise AdaptedError(f"{path}: unknown adapted-classifier kind {kind!r}")
    if model is not None:
        if head.query not in model.adapters:
            raise AdaptedError(
                f"{path}: classifies modality '{head.query}', which the model does not have ({list(model.adapters)})"
            )
        if isinstance(head, PromptHead):
            head.bind(model)
    return head.eval()


def adapted_files(checkpoint: str | Path) -> dict[str, Path]:
    """name -> file of the adapted classifiers saved beside a checkpoint (``<checkpoint>/adapted/*.safetensors``)."""
    folder = Path(checkpoint) / ADAPTED_DIR
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}
