"""Video adapter: T sampled frames -> the image adapter's tower on every frame -> temporal pooling.

preprocess: decode T frames (``align.modalities.video_io``: uniform or TSN segment sampling, stride/fps,
            short clips stretched) -> one random crop for the whole clip in training (resize +
            centre crop in evaluation) -> normalise with the frame tower's mean/std -> [T, 3, H, W];
            collate -> [B, T, 3, H, W].
trunk:      [B*T, 3, H, W] through the image tower in ONE batched call -> [B, T, D] -> pooling:
            ``mean`` over frames, or ``transformer`` (CLIP4Clip's "seqTransf": learned frame
            position embeddings, a small transformer, a residual add of the frame features, then
            the mean) -> [B, D].

Any image tower the image adapter can build (open_clip name + pretrained, or ``vision_cfg``) is
the frame encoder: ``image`` holds the image adapter's options. Its ``augment`` is not used; the
clip-level ``augment`` here decides, so all frames of a clip share one crop.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from align.errors import SampleError
from align.modalities.base import AdapterOptions, ModalityAdapter, Preprocessor
from align.modalities.image import ImageAdapter, ImageOptions
from align.modalities.layers import prenorm_transformer
from align.modalities.video_io import FrameSampler, read_video
from align.registry import ADAPTERS


class VideoOptions(AdapterOptions):
    image: ImageOptions = Field(description="the per-frame image tower: the image adapter's options")
    frames: int = Field(8, ge=1, description="T, frames per clip")
    sampling: Literal["uniform", "segment"] = Field(
        "uniform",
        description="uniform: T evenly spaced frames; segment (TSN): one frame per T equal "
        "segments, random in training, the middle in evaluation",
    )
    stride: int = Field(1, ge=1, description="candidate frames are every stride-th (after fps)")
    fps: float | None = Field(
        None, gt=0, description="resample the clip to this frame rate first (files only; decoded arrays have no rate)"
    )
    temporal: Literal["mean", "transformer"] = Field(
        "mean", description="mean of frame features, or CLIP4Clip seqTransf (order-aware)"
    )
    temporal_layers: int = Field(4, ge=1, description="transformer layers (temporal: transformer)")
    temporal_heads: int = Field(8, ge=1, description="attention heads; must divide the frame feature dim")
    temporal_pos_std: float = Field(
        0.02,
        ge=0,
        description="init std of the frame position embeddings. 0.02 (CLIP4Clip, ViT) barely "
        "perturbs pretrained features; towers trained from scratch find frame "
        "order much sooner with ~0.5",
    )
    augment: bool = Field(True, description="one random resized crop per clip in training")
    crop_scale: tuple[float, float] = Field(
        (0.9, 1.0), description="RandomResizedCrop area range (open_clip's image default)"
    )

    @model_validator(mode="after")
    def _scale(self) -> "VideoOptions":
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self

    def sampler(self) -> FrameSampler:
        return FrameSampler(self.frames, self.sampling, self.stride, self.fps)


class VideoPreprocessor(Preprocessor):
    """Raw clip -> float [T, 3, H, W]; the v2 transforms see the clip as one ``Video``, so random
    parameters are drawn once per clip (torch's RNG, seeded per sample by the training dataset)."""

    def __init__(
        self, sampler: FrameSampler, size: int, mean, std, augment: bool, crop_scale: tuple[float, float] = (0.9, 1.0)
    ) -> None:
        from torchvision.transforms import InterpolationMode, v2

        self.sampler = sampler
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        bicubic = InterpolationMode.BICUBIC
        self.eval_tf = v2.Compose([v2.Resize(size, interpolation=bicubic, antialias=True), v2.CenterCrop(size), *tail])
        self.train_tf = (
            v2.Compose([v2.RandomResizedCrop(size, scale=crop_scale, interpolation=bicubic, antialias=True), *tail])
            if augment
            else self.eval_tf
        )

    def __call__(self, raw: Any, *, train: bool) -> torch.Tensor:
        from torchvision import tv_tensors

        frames = read_video(raw, self.sampler, train=train)  # uint8 [T, H, W, 3]
        clip = tv_tensors.Video(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))
        return (self.train_tf if train else self.eval_tf)(clip).as_subclass(torch.Tensor)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        shapes = {tuple(x.shape) for x in items}
        if len(shapes) != 1:
            raise SampleError(f"video clips in a batch must share one shape, got {sorted(shapes)}")
        return torch.stack(items)


class TemporalTransformer(nn.Module):
    """CLIP4Clip seqTransf: x + pos -> transformer -> + x (residual) -> mean over frames."""

    def __init__(self, dim: int, frames: int, layers: int, heads: int, pos_std: float = 0.02) -> None:
        super().__init__()
        self.frame_pos_embed = nn.Parameter(torch.randn(frames, dim) * pos_std)
        self.transformer = prenorm_transformer(dim, heads, mlp_ratio=4.0, dropout=0.0, layers=layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.frame_pos_embed.shape[0]:
            raise ValueError(
                f"clip has {t} frames; the temporal transformer was built for at most "
                f"{self.frame_pos_embed.shape[0]} (option 'frames')"
            )
        y = self.transformer(x + self.frame_pos_embed[:t].to(x.dtype))
        return (y + x).mean(dim=1)


@ADAPTERS.register("video")
class VideoAdapter(ModalityAdapter):
    """preprocess: decode + sample T frames, one augmentation per clip -> trunk: image tower over all
    B*T frames at once -> temporal pooling (mean | transformer) -> [B, D]."""

    Options = VideoOptions

    @classmethod
    def reload_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The per-frame image tower's ``pretrained`` is reset too: its weights are in the checkpoint."""
        out = super().reload_options(options)
        if isinstance(out.get("image"), dict):
            out["image"] = ImageAdapter.reload_options(out["image"])
        return out

    def __init__(self, options: VideoOptions) -> None:
        super().__init__(options)
        self.image = ImageAdapter(options.image)
        self.feature_dim = self.image.feature_dim
        if options.temporal == "transformer":
            if self.feature_dim % options.temporal_heads:
                raise ValueError(
                    f"temporal_heads ({options.temporal_heads}) must divide the frame feature dim ({self.feature_dim})"
                )
            self.temporal = TemporalTransformer(
                self.feature_dim,
                options.frames,
                options.temporal_layers,
                options.temporal_heads,
                options.temporal_pos_std,
            )
        else:
            self.temporal = None

    def preprocessor(self) -> VideoPreprocessor:
        o = self.options
        return VideoPreprocessor(
            o.sampler(), self.image.image_size, self.image.mean, self.image.std, o.augment, o.crop_scale
        )

    def frame_features(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, D], every frame through the tower in one call."""
        if batch.ndim != 5 or batch.shape[2] != 3:
            raise ValueError(f"video batch must be [B, T, 3, H, W], got {tuple(batch.shape)}")
        b, t = batch.shape[:2]
        return self.image(batch.flatten(0, 1)).view(b, t, -1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        feats = self.frame_features(batch)
        return feats.mean(dim=1) if self.temporal is None else self.temporal(feats)
