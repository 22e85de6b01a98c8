"""Text adapter: an open_clip text tower + its tokenizer (by model name, optionally pretrained, or
built from a ``CLIPTextCfg``), or any HF transformers encoder by hub id / local path with mean or
CLS pooling.

Raw samples are strings; a list of strings means "several captions for this item": training
draws one at random each time the item is seen, evaluation uses the first.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from align.errors import SampleError
from align.modalities.base import AdapterOptions, ModalityAdapter, Preprocessor, resolve_model_path
from align.modalities.image import check_dataclass_keys
from align.modalities.layers import freeze_, masked_mean
from align.registry import ADAPTERS


class TextOptions(AdapterOptions):
    model: str | None = Field(None, description="open_clip model name (its text tower and tokenizer)")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or local checkpoint file")
    text_cfg: dict[str, Any] | None = Field(
        None, description="open_clip CLIPTextCfg fields for a tower built from scratch (open_clip BPE tokenizer)"
    )
    output_dim: int = Field(512, gt=0, description="tower output width when built from text_cfg")
    hf_model: str | None = Field(
        None,
        description="transformers encoder: hub id, local folder, or "
        "package:<module>/<folder> inside an installed package",
    )
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(
        77, gt=0, description="token limit for hf_model (open_clip towers use their context_length)"
    )
    freeze: bool = False

    @field_validator("text_cfg")
    @classmethod
    def _known_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:  # a field validator, so the error is located at 'text_cfg'
            check_dataclass_keys("text_cfg", "CLIPTextCfg", value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "TextOptions":
        given = [k for k in ("model", "text_cfg", "hf_model") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'model', 'text_cfg' or 'hf_model'")
        if self.pretrained and self.model is None:
            raise ValueError("'pretrained' needs 'model'")
        return self


def pick_text(raw: Any, train: bool) -> str:
    if isinstance(raw, (list, tuple)):
        if not raw or not all(isinstance(t, str) for t in raw):
            raise SampleError(f"text sample must be a string or a non-empty list of strings, got {raw!r:.80}")
        blank = next((i for i, t in enumerate(raw) if not t.strip()), None)
        if blank is not None:  # an empty caption would be embedded as the tokenizer's bare start/end
            raise SampleError(f"caption {blank} of {len(raw)} is empty or whitespace only")
        return random.choice(raw) if train else raw[0]
    if not isinstance(raw, str):
        raise SampleError(f"text sample must be a string, got {type(raw).__name__}")
    if not raw.strip():
        raise SampleError(f"text is empty or whitespace only ({raw!r})")
    return raw


class TextPreprocessor(Preprocessor):
    """raw -> one checked string (a random caption of a list in training); tokenized at collate."""

    deterministic = True  # a string is tokenized alike in training and eval (a caption list is not)

    def deterministic_for(self, raw: Any) -> bool:
        return isinstance(raw, str)

    def __call__(self, raw: Any, *, train: bool) -> str:
        return pick_text(raw, train)


class OpenClipTextPreprocessor(TextPreprocessor):
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def collate(self, items: list[str]) -> torch.Tensor:
        return self.tokenizer(items)


class HFTextPreprocessor(TextPreprocessor):
    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(items, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask")}


def open_clip_text_tower(name: str, pretrained: str | None):
    """The text tower of a named open_clip model as one module, with its (pretrained) weights.

    CustomTextCLIP models keep it as ``model.text``; classic CLIP models keep the text parts inline,
    so we build a ``TextTransformer`` from the model config and copy those weights into it.
    """
    import open_clip
    from open_clip.model import _build_text_tower

    clip = open_clip.create_model(name, pretrained=pretrained)
    if getattr(clip, "text", None) is not None:
        return clip.text
    cfg = open_clip.get_model_config(name)
    tower = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    src = clip.state_dict()
    wanted = tower.state_dict()
    missing = [k for k in wanted if k not in src]
    if missing:
        raise RuntimeError(f"open_clip model '{name}': text weights not found for {missing[:5]}")
    tower.load_state_dict({k: src[k] for k in wanted})
    return tower


@ADAPTERS.register("text")
class TextAdapter(ModalityAdapter):
    """preprocess: pick caption, tokenize at collate -> trunk: text encoder -> pooled features."""

    Options = TextOptions

    def __init__(self, options: TextOptions) -> None:
        super().__init__(options)
        if options.hf_model is not None:
            from transformers import AutoModel, AutoTokenizer

            path = resolve_model_path(options.hf_model)
            self.tower = AutoModel.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.feature_dim = int(self.tower.config.hidden_size)
            self.kind = "hf"
        else:
            import open_clip
            from open_clip.model import CLIPTextCfg, _build_text_tower

            if options.model is not None:
                self.tower = open_clip_text_tower(options.model, options.pretrained)
                self.tokenizer = open_clip.get_tokenizer(options.model)
            else:
                cfg = CLIPTextCfg(**options.text_cfg)
                self.tower = _build_text_tower(options.output_dim, cfg)
                self.tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
            self.feature_dim = int(self.tower.output_dim)
            self.kind = "open_clip"
        if options.freeze:
            freeze_(self.tower)

    def preprocessor(self) -> Preprocessor:
        if self.kind == "hf":
            return HFTextPreprocessor(self.tokenizer, self.options.max_length)
        return OpenClipTextPreprocessor(self.tokenizer)

    def forward(self, batch) -> torch.Tensor:
        if self.kind == "open_clip":
            return self.tower(batch)
        out = self.tower(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state
        if self.options.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, batch["attention_mask"])
