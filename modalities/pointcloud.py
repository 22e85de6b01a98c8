"""Point-cloud adapter: PointNet or a Point-BERT / Point-MAE style patch transformer, from scratch.

preprocess (``PointCloudPreprocessor``, numpy in the DataLoader workers): read the raw sample
  (``align.modalities.pointcloud_io``: mesh / text / npy / npz / ascii pcd files, arrays, dicts), check
  it (NaN / inf coordinates or features: error, or dropped with ``drop_nonfinite``; fewer than
  ``min_points`` points: error), then
  * sample exactly ``num_points``: ``fps`` = farthest-point sampling (training starts from a random
    point, evaluation from point 0, so evaluation is deterministic), or ``random`` (without
    replacement; a fixed seed in evaluation). A cloud with fewer points keeps all of them and is
    padded with repeats of randomly chosen points (with replacement; shuffled in training): max
    pooling cannot tell them from the original points, mean pooling and kNN groups weight the
    repeated points a little more. No masks are needed, every sample has exactly num_points;
  * normalise the sampled points: ``sphere`` (centroid to the origin, farthest point at radius 1),
    ``center`` (centroid to the origin, divided by ``unit``, so absolute size is kept) or ``none``;
    ``radius_feature`` appends log(1 + radius / unit) of the cloud as one more channel, so a
    sphere-normalised encoder still knows how big the object was;
  * augment, in training only: rotation about ``up_axis`` (``rotate_up``; z for LiDAR, y for most
    CAD meshes), one isotropic factor from ``scale``, Gaussian ``jitter`` clipped at ``jitter_clip``;
  * append the requested ``features`` in order (rgb 0..1, normals, intensity); a requested feature
    the sample lacks is an error naming the file.
  Each sample is float32 [num_points, 3 + F]; collate stacks to [B, num_points, 3 + F].
trunk (``forward``, vectorised over the batch, no loop over clouds):
  * ``pointnet`` (Qi et al. 2017, without the T-Nets): a shared per-point MLP (``widths``, each
    Linear -> norm -> ReLU), then max (or max + mean) pooling over the points;
  * ``patch``: ``num_groups`` centres by batched farthest-point sampling in torch (a loop over the
    centres only), the ``group_size`` nearest points of each (``torch.cdist`` + ``topk``) expressed
    relative to their centre, a two-stage mini-PointNet per group -> one token, a learned MLP
    positional embedding of the centre, a CLS token, a pre-norm ``nn.TransformerEncoder``, final
    LayerNorm, and ``cls`` / ``mean`` / ``max`` pooling.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from align.errors import SampleError
from align.modalities.base import AdapterOptions, EncoderVariants, ModalityAdapter, Preprocessor
from align.modalities.layers import ClsTransformer, farthest_point_sample
from align.modalities.pointcloud_io import FEATURE_DIMS, augment, check_cloud, normalize_xyz, read_cloud, sample_indices
from align.registry import ADAPTERS

Feature = Literal["rgb", "normal", "intensity"]


class _PointCloudCommon(AdapterOptions):
    """Options both encoder variants read: reading, sampling, normalising, augmenting."""

    POOLINGS: ClassVar[tuple[str, ...]] = ()
    # reading + sampling
    num_points: int = Field(1024, gt=0, description="points per sample after sampling / padding")
    sampling: Literal["fps", "random"] = "fps"
    min_points: int = Field(1, ge=1, description="clouds with fewer raw points are bad samples")
    mesh_points: int | None = Field(
        None,
        gt=0,
        description="surface samples drawn from a mesh before num_points are chosen (default 2 * num_points)",
    )
    features: list[Feature] = Field(default_factory=list, description="per-point channels after xyz")
    point_columns: list[Literal["rgb", "normal", "intensity", "_"]] | None = Field(
        None, description="names of the columns after x y z in arrays / text / npy files; default: guess"
    )
    intensity_scale: float | None = Field(
        None, gt=0, description="divide intensity by this; None: by the cloud's largest |intensity|"
    )
    drop_nonfinite: bool = Field(False, description="drop points with NaN / inf instead of failing")
    normalize: Literal["sphere", "center", "none"] = "sphere"
    unit: float = Field(
        1.0, gt=0, description="'center' / 'none' divide coordinates by this (e.g. 10 for metres -> tens of metres)"
    )
    radius_feature: bool = Field(False, description="append log(1 + radius/unit) as a channel")
    # augmentation (training only)
    rotate_up: bool = False
    up_axis: Literal["x", "y", "z"] = "z"
    scale: tuple[float, float] | None = Field(None, description="isotropic scale factor range [lo, hi]")
    jitter: float = Field(0.0, ge=0, description="sigma of per-point Gaussian noise")
    jitter_clip: float | None = Field(0.05, gt=0)
    # both encoders
    norm: Literal["batch", "layer", "none"] = "batch"
    pooling: Literal["max", "maxmean", "cls", "mean"] | None = Field(
        None, description="pointnet: max | maxmean (default max); patch: cls | mean | max (default cls)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "_PointCloudCommon":
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be [lo, hi] with 0 < lo <= hi, got {list(self.scale)}")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features has duplicates: {self.features}")
        if self.normalize == "sphere" and self.unit != 1.0 and not self.radius_feature:
            raise ValueError(
                "'unit' applies to normalize center / none and to radius_feature (sphere scales the points to radius 1)"
            )
        allowed = self.POOLINGS
        if self.pooling is not None and self.pooling not in allowed:
            raise ValueError(f"pooling '{self.pooling}' is not for encoder '{self.encoder}'; use {allowed}")
        return self

    def in_channels(self) -> int:
        return 3 + sum(FEATURE_DIMS[f] for f in self.features) + int(self.radius_feature)

    def pooling_mode(self) -> str:
        return self.pooling or self.POOLINGS[0]


class PointNetOptions(_PointCloudCommon):
    """encoder "pointnet": shared per-point MLP + pooling."""

    POOLINGS: ClassVar[tuple[str, ...]] = ("max", "maxmean")
    encoder: Literal["pointnet"] = "pointnet"
    widths: list[PositiveInt] = Field(
        default_factory=lambda: [64, 128, 256], min_length=1, description="per-point MLP widths"
    )


class PatchOptions(_PointCloudCommon):
    """encoder "patch": FPS + kNN groups -> mini-PointNet tokens -> transformer (Point-BERT / MAE)."""

    POOLINGS: ClassVar[tuple[str, ...]] = ("cls", "mean", "max")
    encoder: Literal["patch"] = "patch"
    num_groups: int = Field(64, gt=0, description="number of FPS centres / tokens")
    group_size: int = Field(32, gt=0, description="nearest points per group")
    token_widths: list[PositiveInt] = Field(
        default_factory=lambda: [64, 128], min_length=1, description="first-stage mini-PointNet widths"
    )
    width: int = Field(192, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _patch_consistent(self) -> "PatchOptions":
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if max(self.num_groups, self.group_size) > self.num_points:
            raise ValueError(
                f"num_groups {self.num_groups} and group_size {self.group_size} must be <= num_points {self.num_points}"
            )
        return self


PointCloudOptions = EncoderVariants("pointnet", pointnet=PointNetOptions, patch=PatchOptions)


# ------------------------------------------------------------------------------------------------
# preprocessing (DataLoader workers)
# ------------------------------------------------------------------------------------------------


class PointCloudPreprocessor(Preprocessor):
    """raw -> checked cloud -> num_points sampled -> normalised -> (augmented) -> [num_points, 3+F]."""

    def __init__(self, o: _PointCloudCommon) -> None:
        self.o = o

    def __call__(self, raw: Any, *, train: bool) -> torch.Tensor:
        o = self.o
        cloud = read_cloud(
            raw, mesh_points=o.mesh_points or 2 * o.num_points, train=train, point_columns=o.point_columns
        )
        cloud = check_cloud(cloud, o.min_points, o.drop_nonfinite)
        missing = [f for f in o.features if f not in cloud.features]
        if missing:
            raise SampleError(
                f"{cloud.where}: has no {missing} (requested features {o.features}; it "
                f"has {sorted(cloud.features) or 'xyz only'})"
            )
        idx = sample_indices(cloud.xyz, o.num_points, o.sampling, train)
        xyz, radius = normalize_xyz(cloud.xyz[idx], o.normalize, o.unit)
        feats = {f: cloud.features[f][idx] for f in o.features}
        if train:
            xyz, normal = augment(
                xyz,
                feats.get("normal"),
                rotate_axis=o.up_axis if o.rotate_up else None,
                scale=o.scale,
                jitter=o.jitter,
                jitter_clip=o.jitter_clip,
            )
            if normal is not None:
                feats["normal"] = normal
        if "intensity" in feats:
            peak = o.intensity_scale or float(np.abs(feats["intensity"]).max())
            feats["intensity"] = feats["intensity"] / (peak if peak > 0 else 1.0)
        cols = [xyz.astype(np.float32)] + [feats[f].astype(np.float32) for f in o.features]
        if o.radius_feature:
            cols.append(np.full((o.num_points, 1), math.log1p(radius), np.float32))
        return torch.from_numpy(np.concatenate(cols, axis=1))

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)


# ------------------------------------------------------------------------------------------------
# encoders
# ------------------------------------------------------------------------------------------------


class ChannelNorm(nn.Module):
    """BatchNorm / LayerNorm over the last (channel) axis of [..., C], every point one sample for
    BatchNorm, as Conv1d + BatchNorm1d does in PointNet."""

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        self.kind = kind
        self.norm = {
            "batch": lambda: nn.BatchNorm1d(channels),
            "layer": lambda: nn.LayerNorm(channels),
            "none": nn.Identity,
        }[kind]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind != "batch":
            return self.norm(x)
        return self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def shared_mlp(in_ch: int, widths: list[int], norm: str, last_act: bool = True) -> nn.Sequential:
    """Per-point Linear -> norm -> ReLU layers on [..., C] (``last_act=False``: plain last Linear)."""
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers.append(nn.Linear(in_ch, w))
        if last_act or i < len(widths) - 1:
            layers += [ChannelNorm(norm, w), nn.ReLU(inplace=True)]
        in_ch = w
    return nn.Sequential(*layers)


class PointNet(nn.Module):
    def __init__(self, in_ch: int, o: PointNetOptions) -> None:
        super().__init__()
        self.mlp = shared_mlp(in_ch, o.widths, o.norm)
        self.pooling = o.pooling_mode()
        self.out_dim = o.widths[-1] * (2 if self.pooling == "maxmean" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)  # [B, N, W]
        if self.pooling == "maxmean":
            return torch.cat([h.amax(1), h.mean(1)], dim=-1)
        return h.amax(1)


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, C], idx [B, ...] -> [B, ..., C]."""
    rows = torch.arange(x.shape[0], device=x.device).view(-1, *([1] * (idx.dim() - 1)))
    return x[rows, idx]


def group_points(x: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centres [B, G, 3] and their kNN groups [B, G, K, C], xyz relative to the centre."""
    xyz = x[..., :3]
    centres = gather_points(xyz, farthest_point_sample(xyz.detach(), num_groups))
    knn = (
        torch.cdist(centres, xyz, compute_mode="donot_use_mm_for_euclid_dist")
        .topk(group_size, dim=-1, largest=False)
        .indices
    )  # [B, G, K]
    groups = gather_points(x, knn)
    groups = torch.cat([groups[..., :3] - centres[:, :, None, :], groups[..., 3:]], dim=-1)
    return centres, groups


class GroupTokenizer(nn.Module):
    """Point-BERT's mini-PointNet: MLP -> max over the group -> concat with each point -> MLP -> max."""

    def __init__(self, in_ch: int, widths: list[int], width: int, norm: str) -> None:
        super().__init__()
        self.first = shared_mlp(in_ch, widths, norm, last_act=False)
        self.second = shared_mlp(2 * widths[-1], [width, width], norm, last_act=False)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:  # [B, G, K, C] -> [B, G, width]
        f = self.first(groups)
        f = torch.cat([f.amax(2, keepdim=True).expand_as(f), f], dim=-1)
        return self.second(f).amax(2)


class PatchTransformer(ClsTransformer):
    """Point-BERT / Point-MAE: kNN groups -> mini-PointNet tokens placed by an MLP of their centre
    (``pos``), then the shared CLS-token trunk (``cls_pos``, pre-norm transformer, LayerNorm, pooling)."""

    def __init__(self, in_ch: int, o: PatchOptions) -> None:
        stem = {
            "tokenizer": GroupTokenizer(in_ch, o.token_widths, o.width, o.norm),
            "pos": nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, o.width)),
        }
        super().__init__(
            stem,
            width=o.width,
            heads=o.heads,
            mlp_ratio=o.mlp_ratio,
            dropout=o.dropout,
            layers=o.layers,
            pooling=o.pooling_mode(),
        )
        self.num_groups, self.group_size = o.num_groups, o.group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres, groups = group_points(x, self.num_groups, self.group_size)
        return self.encode(self.tokenizer(groups) + self.pos(centres))


@ADAPTERS.register("pointcloud")
class PointCloudAdapter(ModalityAdapter):
    """preprocess: read, sample, normalise (+ augment) -> trunk: PointNet or patch transformer."""

    Options = PointCloudOptions

    def __init__(self, options: PointNetOptions | PatchOptions) -> None:
        super().__init__(options)
        self.in_channels = options.in_channels()
        cls = {"pointnet": PointNet, "patch": PatchTransformer}[options.encoder]
        self.tower = cls(self.in_channels, options)
        self.feature_dim = self.tower.out_dim

    def preprocessor(self) -> Preprocessor:
        return PointCloudPreprocessor(self.options)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 3 or batch.shape[-1] != self.in_channels:
            raise ValueError(
                f"point cloud batch must be [B, N, {self.in_channels}] (xyz + features "
                f"{self.options.features}), got {tuple(batch.shape)}"
            )
        return self.tower(batch)
