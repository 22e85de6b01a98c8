"""Image adapter: any open_clip vision tower (by name, optionally pretrained) or a small ViT built
from an open_clip ``CLIPVisionCfg`` for CPU training. Preprocessing is open_clip's own transform.

Raw samples may be a file path, raw bytes, a PIL image, a HF ``Image`` feature dict
(``{"bytes": ..., "path": ...}``), or an ``HxW`` / ``HxWxC`` array.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from align.errors import SampleError
from align.modalities.base import AdapterOptions, ModalityAdapter, Preprocessor
from align.modalities.layers import freeze_
from align.registry import ADAPTERS

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageOptions(AdapterOptions):
    model: str | None = Field(None, description="open_clip model name, e.g. ViT-B-32")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a local checkpoint file")
    vision_cfg: dict[str, Any] | None = Field(
        None, description="open_clip CLIPVisionCfg fields for a tower built from scratch"
    )
    output_dim: int = Field(512, gt=0, description="tower output width when built from vision_cfg")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    augment: bool = Field(True, description="open_clip's training transform (random resized crop)")
    freeze: bool = False

    @field_validator("vision_cfg")
    @classmethod
    def _known_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:  # a field validator, so the error is located at 'vision_cfg'
            check_dataclass_keys("vision_cfg", "CLIPVisionCfg", value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ImageOptions":
        if (self.model is None) == (self.vision_cfg is None):
            raise ValueError("give exactly one of 'model' (open_clip name) or 'vision_cfg'")
        if self.pretrained and self.model is None:
            raise ValueError("'pretrained' needs 'model'")
        return self


def check_dataclass_keys(field: str, cls_name: str, data: dict) -> None:
    """Unknown keys in an open_clip tower config fail at validation, naming the key."""
    import dataclasses

    from open_clip import model as oc_model

    known = {f.name for f in dataclasses.fields(getattr(oc_model, cls_name))}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'{field}.{k}' for k in unknown]} (not {cls_name} fields); known: {sorted(known)}"
        )
    check_tower_sizes(cls_name, data)


# open_clip tower sizes (CLIPVisionCfg / CLIPTextCfg fields): open_clip does not check them, so a
# width of -8 used to fail only when the model was built, as torch's "negative dimension" error
TOWER_SIZES = (
    "width",
    "layers",
    "heads",
    "head_width",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "context_length",
    "vocab_size",
    "attn_pooler_queries",
    "attn_pooler_heads",
)


def check_tower_sizes(cls_name: str, data: dict) -> None:
    """Every size in an open_clip tower config is a positive number (``layers`` / ``image_size`` may
    be a tuple of them). Raised as a ValidationError located at the key, so that, raised inside the
    options' field validator, the message names the whole dotted key (``...vision_cfg.width``)."""
    from pydantic_core import PydanticCustomError

    errors = []
    for key in TOWER_SIZES:
        if key not in data:
            continue
        value = data[key]
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) and value else [(None, value)]
        for i, item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not item > 0:
                loc = (key,) if i is None else (key, i)
                msg = PydanticCustomError("positive_size", "must be a positive number, got {got}", {"got": repr(item)})
                errors.append({"type": msg, "loc": loc, "input": item})
    if errors:
        raise ValidationError.from_exception_data(cls_name, errors)


def load_image(raw: Any):
    """Decode one raw image sample to an RGB PIL image; errors name the file when there is one."""
    from PIL import Image, UnidentifiedImageError

    where = "image sample"
    try:
        if isinstance(raw, dict):  # HF datasets Image feature with decode=False
            if raw.get("bytes") is not None:
                where = f"image bytes from {raw.get('path') or 'dataset'}"
                img = Image.open(io.BytesIO(raw["bytes"]))
            elif raw.get("path"):
                where = f"image file {raw['path']}"
                img = Image.open(raw["path"])
            else:
                raise SampleError("image dict has neither 'bytes' nor 'path'")
        elif isinstance(raw, (str, Path)):
            where = f"image file {raw}"
            img = Image.open(raw)
        elif isinstance(raw, (bytes, bytearray)):
            where = "image bytes"
            img = Image.open(io.BytesIO(raw))
        elif isinstance(raw, Image.Image):
            img = raw
        elif isinstance(raw, (np.ndarray, torch.Tensor)):
            arr = np.asarray(raw)
            if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
                raise SampleError(f"image array must be HxW or HxWxC (C in 1,3,4), got shape {arr.shape}")
            if arr.dtype != np.uint8:
                arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        else:
            raise SampleError(f"cannot read an image from {type(raw).__name__}")
        img.load()
        return img.convert("RGB")
    except SampleError:
        raise
    except Image.DecompressionBombError as err:  # not an OSError: on_error: skip must still catch it
        raise SampleError(f"{where}: refused, too many pixels to decode safely ({err})") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SampleError(f"{where}: cannot decode image ({err})") from None


class ImagePreprocessor(Preprocessor):
    def __init__(self, size: int, mean, std, augment: bool) -> None:
        import open_clip

        self.train_tf = open_clip.image_transform(size, is_train=augment, mean=mean, std=std)
        self.eval_tf = open_clip.image_transform(size, is_train=False, mean=mean, std=std)

    def __call__(self, raw: Any, *, train: bool) -> torch.Tensor:
        img = load_image(raw)
        return (self.train_tf if train else self.eval_tf)(img)


def _image_size(tower) -> int:
    size = getattr(tower, "image_size", None)
    if size is None:
        size = tower.preprocess_cfg["size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@ADAPTERS.register("image")
class ImageAdapter(ModalityAdapter):
    """preprocess: open_clip transform -> trunk: open_clip vision tower (its own projection kept)."""

    Options = ImageOptions

    def __init__(self, options: ImageOptions) -> None:
        super().__init__(options)
        import open_clip
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        if options.model is not None:
            clip = open_clip.create_model(options.model, pretrained=options.pretrained)
            self.tower = clip.visual
            cfg_mean = getattr(self.tower, "image_mean", None)
            cfg_std = getattr(self.tower, "image_std", None)
            del clip
        else:
            self.tower = _build_vision_tower(options.output_dim, CLIPVisionCfg(**options.vision_cfg))
            cfg_mean = cfg_std = None
        self.feature_dim = int(self.tower.output_dim)
        self.image_size = _image_size(self.tower)
        self.mean = tuple(options.mean or cfg_mean or OPENAI_MEAN)
        self.std = tuple(options.std or cfg_std or OPENAI_STD)
        if options.freeze:
            freeze_(self.tower)

    def preprocessor(self) -> ImagePreprocessor:
        return ImagePreprocessor(self.image_size, self.mean, self.std, self.options.augment)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"image batch must be [B, 3, H, W], got {tuple(batch.shape)}")
        return self.tower(batch)
