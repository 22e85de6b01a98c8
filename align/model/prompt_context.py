"""Learned prompt context (CoOp, CoCoOp) inside a text tower's token embeddings.

CoOp (Zhou et al., IJCV 2022) replaces the words of a hand-written prompt ("a photo of a {}.") by
M learned vectors in the tower's input-embedding space: "[V1] ... [VM] {class}.". Its own code
tokenizes a placeholder prompt "X X ... X {class}." and overwrites the placeholders' embeddings;
this does the same with a forward hook on the tower's input-embedding module, so every text tower
whose tokens pass through one embedding table takes it unchanged: open_clip's ``TextTransformer``
(``token_embedding``, positions added after it) and any HF encoder (``get_input_embeddings()``,
the word table, positions and LayerNorm after it). The rest of the tower, its pooling and the
head run as they always do, so an untrained context initialised from a template's own words
encodes exactly as that template does (tested to 1e-5).

A tower without such a table (an image, audio or graph adapter as the prompt modality) cannot
take learned context: ``context_encoder`` refuses it, naming the adapter.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Sequence

import torch
from accelerate.utils import send_to_device as to_device
from torch import nn

from align.errors import AlignError

PLACEHOLDER = "X"  # one token in open_clip's BPE ("x</w>") and in uncased WordPiece ("x")


class PromptContextError(AlignError, ValueError):
    """The prompt tower cannot take learned context, or the context does not fit it."""


def input_embedding(adapter: nn.Module) -> nn.Module | None:
    """The token-embedding table of a text adapter's tower (None: the adapter has none)."""
    if getattr(adapter, "kind", None) == "hf":
        return adapter.tower.get_input_embeddings()
    if getattr(adapter, "kind", None) == "open_clip":
        return getattr(adapter.tower, "token_embedding", None)
    return None


def _token_ids(batch: Any) -> torch.Tensor:
    return batch["input_ids"] if isinstance(batch, dict) else batch


class ContextEncoder:
    """Encodes ``[ctx] {class}{suffix}`` prompts through one modality's tower with the given context.

    ``n_ctx`` placeholder tokens follow the tower's start token; ``encode(names, ctx)`` takes ctx
    as [1 or P, M, W] (shared, or one context per prompt) and returns unit-norm embeddings [P, D]
    that carry gradients to ``ctx`` (the tower's own weights are not touched)."""

    def __init__(self, model: nn.Module, modality: str, n_ctx: int, suffix: str = ".") -> None:
        if modality not in model.adapters:
            raise PromptContextError(f"model has no modality '{modality}'; it has {list(model.adapters)}")
        adapter = model.adapters[modality]
        table = input_embedding(adapter)
        if table is None:
            name = model.cfg.modalities[modality].adapter_name(modality)
            raise PromptContextError(
                f"prompt modality '{modality}' (adapter '{name}') has no token-embedding table, so it cannot take "
                "learned prompt context (CoOp / CoCoOp need a text tower: open_clip or a transformers encoder)"
            )
        if n_ctx < 1:
            raise PromptContextError(f"n_ctx must be at least 1, got {n_ctx}")
        self.model, self.modality, self.n_ctx, self.suffix = model, modality, int(n_ctx), suffix
        self.table = table
        self.width = int(table.weight.shape[1])
        self.pre = adapter.preprocessor()
        self.device = next(model.parameters()).device
        self._ctx: torch.Tensor | None = None
        self.start = self._placeholder_start()

    def prompts(self, names: Sequence[str]) -> list[str]:
        prefix = " ".join([PLACEHOLDER] * self.n_ctx)
        return [f"{prefix} {name}{self.suffix}" for name in names]

    def _tokens(self, texts: Sequence[str]) -> Any:
        return to_device(self.pre.collate(list(texts)), self.device)

    def _placeholder_start(self) -> int:
        ids = _token_ids(self._tokens(self.prompts(["a"])))[0]
        x = _token_ids(self._tokens([PLACEHOLDER]))[0]
        x_id = int(x[1])  # the placeholder's id: the token after the start token
        hits = (ids == x_id).nonzero().flatten().tolist()
        if len(hits) < self.n_ctx or hits[: self.n_ctx] != list(range(hits[0], hits[0] + self.n_ctx)):
            raise PromptContextError(
                f"modality '{self.modality}': the tokenizer does not turn {self.n_ctx} placeholders "
                f"'{PLACEHOLDER}' into {self.n_ctx} consecutive tokens; learned context cannot be placed"
            )
        return int(hits[0])

    def words_init(self, words: str) -> torch.Tensor:
        """[n, W] the token embeddings of ``words`` (CoOp's ``ctx_init``), start/end tokens dropped;
        ``n`` is their token count, which must equal ``n_ctx``."""
        batch = self._tokens([words])
        ids = _token_ids(batch)[0]
        mask = batch["attention_mask"][0].bool() if isinstance(batch, dict) else ids != 0
        inner = ids[mask][1:-1]
        if len(inner) != self.n_ctx:
            raise PromptContextError(f"'{words}' is {len(inner)} tokens for the tower, not n_ctx={self.n_ctx}")
        with torch.no_grad():
            return self.table(inner).detach().float().cpu().clone()

    def count_tokens(self, words: str) -> int:
        batch = self._tokens([words])
        ids = _token_ids(batch)[0]
        mask = batch["attention_mask"][0].bool() if isinstance(batch, dict) else ids != 0
        return int(mask.sum()) - 2

    def _hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        ctx = self._ctx
        s, m = self.start, self.n_ctx
        ctx = ctx.to(device=output.device, dtype=output.dtype).expand(output.shape[0], m, output.shape[2])
        return torch.cat([output[:, :s], ctx, output[:, s + m :]], dim=1)

    @contextmanager
    def _with(self, ctx: torch.Tensor):
        if ctx.ndim != 3 or ctx.shape[1:] != (self.n_ctx, self.width):
            raise PromptContextError(f"context must be [P, {self.n_ctx}, {self.width}], got {tuple(ctx.shape)}")
        self._ctx = ctx
        handle = self.table.register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()
            self._ctx = None

    def encode(self, names: Sequence[str], ctx: torch.Tensor) -> torch.Tensor:
        """Unit-norm [P, D] embeddings of ``names``' prompts with context ``ctx`` ([1 or P, M, W])."""
        if ctx.shape[0] not in (1, len(names)):
            raise PromptContextError(f"{ctx.shape[0]} contexts for {len(names)} prompts")
        batch = self._tokens(self.prompts(names))
        with self._with(ctx):
            return self.model.encode(self.modality, batch).float()


def context_encoder(model: nn.Module, modality: str, n_ctx: int, suffix: str = ".") -> ContextEncoder:
    """A ``ContextEncoder`` for ``modality``'s tower; a clear error when it has no token embeddings."""
    return ContextEncoder(model, modality, n_ctx, suffix)
