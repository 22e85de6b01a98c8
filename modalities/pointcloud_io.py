"""Point-cloud reading, sampling, normalisation and augmentation (numpy; runs in DataLoader workers).

Raw samples (``read_cloud``):
  * a path, by extension: meshes ``.ply .off .obj .stl .glb .gltf`` through trimesh (a mesh with
    faces is sampled on its surface, area-weighted, with ``trimesh.sample.sample_surface``: seed 0
    in evaluation, a seed drawn from ``np.random`` in training; a ``.ply`` without faces gives its
    vertices, plus colours / normals (nx ny nz) / intensity vertex properties when present);
    ``.xyz .txt .csv`` text (whitespace or comma separated ``x y z [extra...]``, ``#`` comments
    and up to 5 non-numeric header lines skipped); ``.npy`` ([N, 3+E]); ``.npz`` (key ``points``
    plus optional ``colors`` / ``normals`` / ``intensity``); ``.pcd`` (ASCII only: FIELDS parsed,
    x y z + rgb / rgba (packed) or r g b, intensity, normal_x/y/z; binary PCD is an error);
  * an array-like [N, 3+E] (numpy, torch, list of lists from an HF column), or flat 1-D
    (consecutive rows of 3+E values, e.g. ``packed-npz`` with ``flat: true``, which is ~10x faster
    to read back from an Arrow table than nested lists);
  * a dict ``{"points": [N, 3] or flat, "colors"|"rgb": [N, 3], "normals": [N, 3], "intensity": [N]}``
    (e.g. a row packed by ``pack_columns``).
The E extra columns of arrays and text files are named by ``point_columns`` (groups ``rgb`` (3),
``normal`` (3), ``intensity`` (1), ``_`` (1, ignored)); when not given and a feature is requested,
1 extra column is intensity and 3 are normals if every row has unit length, else rgb.

Features are float32 [N, d]: rgb scaled to 0..1 (values above 1 are taken as 8-bit, above 255 as
16-bit), normals as given, intensity divided by ``intensity_scale`` (None: by the cloud's largest
|value|). Every failure is a ``SampleError`` whose message names the file ("point cloud file PATH")
or the kind of in-memory sample.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from align.errors import SampleError
from align.modalities.layers import farthest_point_sample

FEATURE_DIMS = {"rgb": 3, "normal": 3, "intensity": 1}
COLUMN_DIMS = {**FEATURE_DIMS, "_": 1}
MESH_EXTS = {".ply", ".off", ".obj", ".stl", ".glb", ".gltf"}
TEXT_EXTS = {".xyz", ".txt", ".csv", ".pts"}
MAX_HEADER_LINES = 5


@dataclass
class RawCloud:
    """Points as read: xyz float64 [N, 3] (float64 so big projected coordinates survive centring),
    named features float32 [N, d], and a description of the sample for error messages."""

    xyz: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    where: str = "point cloud"


def read_cloud(
    raw: Any, *, mesh_points: int, train: bool = False, point_columns: Sequence[str] | None = None
) -> RawCloud:
    """Dispatch on the raw sample's type (see the module docstring)."""
    if isinstance(raw, (str, Path)):
        return read_file(Path(raw), mesh_points=mesh_points, train=train, point_columns=point_columns)
    if isinstance(raw, dict):
        return _from_dict(raw, "point cloud dict")
    if hasattr(raw, "detach"):  # torch tensor
        raw = raw.detach().cpu().numpy()
    if isinstance(raw, (np.ndarray, list, tuple)):
        width = 3 + sum(COLUMN_DIMS[n] for n in point_columns or ())
        return from_columns(_as_table(raw, "point cloud array", width), "point cloud array", point_columns)
    raise SampleError(
        f"cannot read a point cloud from {type(raw).__name__}; expected a path, an "
        "[N, 3+F] array or a dict with 'points'"
    )


def _as_table(value: Any, where: str, flat_width: int | None = None) -> np.ndarray:
    """A float64 [N, >=3] table; a flat 1-D array is reshaped to rows of ``flat_width`` values."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise SampleError(f"{where}: not a numeric [N, 3+F] array ({err})") from None
    if arr.ndim == 1 and flat_width:
        if arr.size % flat_width:
            raise SampleError(f"{where}: a flat array of {arr.size} values is not rows of {flat_width}")
        arr = arr.reshape(-1, flat_width)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise SampleError(f"{where}: expected an [N, 3+F] array, got shape {list(arr.shape)}")
    return arr


def from_columns(table: np.ndarray, where: str, point_columns: Sequence[str] | None) -> RawCloud:
    """x y z in the first three columns; the rest named by ``point_columns`` (or guessed)."""
    extra = table[:, 3:]
    names = list(point_columns) if point_columns is not None else _guess_columns(extra)
    width = sum(COLUMN_DIMS[n] for n in names)
    if names and width != extra.shape[1]:
        raise SampleError(
            f"{where}: point_columns {names} describe {width} extra columns, but the data "
            f"has {extra.shape[1]} after x y z"
        )
    feats, col = {}, 0
    for n in names:
        if n != "_":
            feats[n] = extra[:, col : col + COLUMN_DIMS[n]]
        col += COLUMN_DIMS[n]
    return RawCloud(table[:, :3], _clean_features(feats, where), where)


def _guess_columns(extra: np.ndarray) -> list[str]:
    if extra.shape[1] == 1:
        return ["intensity"]
    if extra.shape[1] == 3 and len(extra):
        unit = np.abs(np.linalg.norm(extra, axis=1) - 1) < 1e-2
        return ["normal"] if unit.all() else ["rgb"]
    return []  # unknown layout: no features (asking for one is then a clear error)


def _from_dict(raw: dict, where: str) -> RawCloud:
    if raw.get("points") is None:
        raise SampleError(f"{where}: no 'points' key (keys: {sorted(raw)})")
    pts = raw["points"]
    pts = pts.detach().cpu().numpy() if hasattr(pts, "detach") else pts
    xyz = _as_table(pts, where, flat_width=3)
    if xyz.shape[1] != 3:
        raise SampleError(f"{where}: 'points' must be [N, 3], got {list(xyz.shape)}")
    feats = {}
    for name, keys in (("rgb", ("colors", "rgb")), ("normal", ("normals",)), ("intensity", ("intensity",))):
        value = next((raw[k] for k in keys if raw.get(k) is not None), None)
        if value is not None:
            value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
            try:
                arr = np.asarray(value, dtype=np.float64).reshape(len(xyz), -1)
            except (ValueError, TypeError) as err:
                raise SampleError(f"{where}: '{keys[0]}' does not fit {len(xyz)} points ({err})") from None
            feats[name] = arr[:, :3] if name == "rgb" else arr  # drop alpha
    return RawCloud(xyz, _clean_features(feats, where), where)


def _clean_features(feats: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in feats.items():
        arr = np.asarray(arr, dtype=np.float64).reshape(len(arr), -1)
        if arr.shape[1] != FEATURE_DIMS[name]:
            raise SampleError(f"{where}: feature '{name}' has {arr.shape[1]} columns, expected {FEATURE_DIMS[name]}")
        if name == "rgb" and arr.size and arr.max() > 1.0:
            arr = arr / (65535.0 if arr.max() > 255.0 else 255.0)
        out[name] = arr.astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


def read_file(
    path: Path, *, mesh_points: int, train: bool = False, point_columns: Sequence[str] | None = None
) -> RawCloud:
    where = f"point cloud file {path}"
    if not path.is_file():
        raise SampleError(f"{where}: no such file")
    ext = path.suffix.lower()
    if ext in MESH_EXTS:
        return read_mesh(path, mesh_points, train, where)
    if ext in TEXT_EXTS:
        return from_columns(read_text_table(path, where), where, point_columns)
    if ext == ".npy":
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise SampleError(f"{where}: cannot read .npy ({err})") from None
        return from_columns(_as_table(table, where), where, point_columns)
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise SampleError(f"{where}: cannot read .npz ({err})") from None
        return _from_dict(data, where)
    if ext == ".pcd":
        return read_pcd(path, where)
    raise SampleError(
        f"{where}: unsupported extension '{ext}' (known: {sorted(MESH_EXTS | TEXT_EXTS | {'.npy', '.npz', '.pcd'})})"
    )


def read_text_table(path: Path, where: str) -> np.ndarray:
    """Numeric rows of a text file; the delimiter (comma or whitespace) is taken from the first
    data row, non-numeric header lines before it are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SampleError(f"{where}: cannot read text ({err})") from None
    lines = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
    start = next((i for i, ln in enumerate(lines[: MAX_HEADER_LINES + 1]) if _numeric(ln)), len(lines))
    if start >= len(lines):
        raise SampleError(f"{where}: no numeric x y z rows after at most {MAX_HEADER_LINES} header lines")
    delimiter = "," if "," in lines[start] else None
    try:
        table = np.loadtxt(io.StringIO("\n".join(lines[start:])), delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise SampleError(f"{where}: malformed rows ({err})") from None
    return _as_table(table, where)


def _numeric(line: str) -> bool:
    try:
        [float(v) for v in line.replace(",", " ").split()]
        return True
    except ValueError:
        return False


def read_mesh(path: Path, count: int, train: bool, where: str) -> RawCloud:
    """trimesh: faces -> ``count`` surface samples (+ face normals, colours); no faces -> vertices."""
    import trimesh

    try:
        geom = trimesh.load(str(path))
        if isinstance(geom, trimesh.Scene):
            parts = list(geom.geometry.values())
            if not parts:
                raise ValueError("no geometry in the file")
            geom = parts[0] if len(parts) == 1 else geom.to_geometry()
    except Exception as err:  # trimesh's loaders raise many types on corrupt input
        raise SampleError(f"{where}: cannot read mesh ({type(err).__name__}: {err})") from None
    faces = getattr(geom, "faces", None)
    if faces is not None and len(faces):
        seed = int(np.random.randint(2**31)) if train else 0
        try:
            pts, face_idx = trimesh.sample.sample_surface(geom, count, seed=seed)
        except Exception as err:
            raise SampleError(f"{where}: cannot sample the mesh surface ({type(err).__name__}: {err})") from None
        feats = {"normal": geom.face_normals[face_idx]}
        if getattr(geom.visual, "kind", None) in ("face", "vertex"):
            feats["rgb"] = geom.visual.face_colors[face_idx, :3] / 255.0  # trimesh colours are uint8
        return RawCloud(np.asarray(pts, np.float64), _clean_features(feats, where), where)
    xyz = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), np.float64).reshape(-1, 3)
    return RawCloud(xyz, _clean_features(_vertex_features(geom, len(xyz)), where), where)


def _vertex_features(geom, n: int) -> dict[str, np.ndarray]:
    """Colours / normals / intensity of a vertex-only file, from trimesh's raw PLY properties."""
    feats: dict[str, np.ndarray] = {}
    props = (getattr(geom, "metadata", {}) or {}).get("_ply_raw", {}).get("vertex", {}).get("data")

    def prop(*names: str) -> np.ndarray | None:
        if props is None:
            return None
        have = props.keys() if isinstance(props, dict) else (props.dtype.names or ())
        if not all(name in have for name in names):
            return None
        return np.stack([np.asarray(props[name], np.float64).reshape(n) for name in names], 1)

    colors = getattr(geom, "colors", None)
    rgb = prop("red", "green", "blue")  # scaled by _clean_features' range rule (8 or 16 bit)
    if colors is not None and len(colors) == n and (rgb is None or rgb.max() <= 255):
        rgb = np.asarray(colors, np.float64)[:, :3] / 255.0  # trimesh colours are uint8
    if rgb is not None:
        feats["rgb"] = rgb
    for name, cols in (("normal", ("nx", "ny", "nz")), ("intensity", ("intensity",))):
        value = prop(*cols)
        if value is not None:
            feats[name] = value
    return feats


def read_pcd(path: Path, where: str) -> RawCloud:
    """ASCII PCD (PCL 0.7): FIELDS/COUNT/TYPE header, then one row per point."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SampleError(f"{where}: cannot read ({err})") from None
    header, pos = {}, 0
    while pos < len(data) and "DATA" not in header:
        end = data.find(b"\n", pos) % (len(data) + 1)  # -1 (no newline) -> len(data)
        key, *values = data[pos:end].decode("ascii", errors="replace").split() or ["#"]
        pos = end + 1
        if not key.startswith("#"):
            header[key.upper()] = values
    if "FIELDS" not in header or "DATA" not in header:
        raise SampleError(f"{where}: not a PCD file (no FIELDS / DATA header)")
    kind = (header["DATA"] or ["?"])[0].lower()
    if kind != "ascii":
        raise SampleError(
            f"{where}: PCD DATA {kind} is not supported; only ascii PCD is "
            "(e.g. save with binary=False / pcl_convert_pcd_ascii_binary ... 0)"
        )
    fields = header["FIELDS"]
    types = dict(zip(fields, header.get("TYPE", ["F"] * len(fields))))
    try:
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        expected = int(header.get("POINTS", ["-1"])[0])
        table = np.loadtxt(io.StringIO(data[pos:].decode("ascii")), dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise SampleError(f"{where}: malformed PCD ({err})") from None
    table = table if table.size else np.zeros((0, sum(counts)))
    if len(counts) != len(fields) or table.shape[1] != sum(counts):
        raise SampleError(
            f"{where}: rows have {table.shape[1]} values, FIELDS {fields} / COUNT {counts} say {sum(counts)}"
        )
    if expected not in (-1, len(table)):
        raise SampleError(f"{where}: header says POINTS {expected}, the file has {len(table)} rows (truncated?)")
    col = {f: table[:, s] for f, s in zip(fields, np.cumsum([0] + counts[:-1]))}
    if not all(k in col for k in "xyz"):
        raise SampleError(f"{where}: FIELDS {fields} lack x y z")
    feats = {}
    packed = next((f for f in ("rgb", "rgba") if f in col), None)
    if packed is not None:
        feats["rgb"] = _unpack_rgb(col[packed], types.get(packed, "F"))
    elif all(k in col for k in "rgb"):
        feats["rgb"] = np.stack([col["r"], col["g"], col["b"]], 1)
    if "intensity" in col:
        feats["intensity"] = col["intensity"][:, None]
    if all(f"normal_{a}" in col for a in "xyz"):
        feats["normal"] = np.stack([col[f"normal_{a}"] for a in "xyz"], 1)
    return RawCloud(np.stack([col["x"], col["y"], col["z"]], 1), _clean_features(feats, where), where)


def _unpack_rgb(values: np.ndarray, pcd_type: str) -> np.ndarray:
    """PCL packs 0x00RRGGBB into one field: written as an unsigned integer (PCL's ASCII writer,
    TYPE U) or as the float32 with those bits (TYPE F, e.g. Open3D)."""
    if pcd_type.upper() == "F" and not (np.all(values == np.floor(values)) and np.all(values >= 1)):
        bits = values.astype(np.float32).view(np.uint32)
    else:
        bits = values.astype(np.uint64).astype(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], 1) / 255.0


# ------------------------------------------------------------------------------------------------
# checks, sampling, normalisation, augmentation
# ------------------------------------------------------------------------------------------------


def check_cloud(cloud: RawCloud, min_points: int, drop_nonfinite: bool = False) -> RawCloud:
    """Non-finite coordinates or features are an error (or dropped), too few points an error."""
    bad = ~np.isfinite(cloud.xyz).all(1)
    for arr in cloud.features.values():
        bad |= ~np.isfinite(arr).all(1)
    if bad.any():
        if not drop_nonfinite:
            raise SampleError(
                f"{cloud.where}: {int(bad.sum())} of {len(bad)} points have NaN or infinite coordinates/features"
            )
        keep = ~bad
        cloud = RawCloud(cloud.xyz[keep], {k: v[keep] for k, v in cloud.features.items()}, cloud.where)
    if len(cloud.xyz) < max(1, min_points):
        raise SampleError(f"{cloud.where}: {len(cloud.xyz)} points, fewer than min_points {max(1, min_points)}")
    return cloud


def sample_indices(xyz: np.ndarray, k: int, method: str, train: bool) -> np.ndarray:
    """Exactly ``k`` point indices. N >= k: farthest-point (start: a random point in training,
    point 0 in evaluation) or uniform random without replacement. N < k: every point once, then
    ``k - N`` repeats of randomly chosen points (with replacement); in training that set is also
    shuffled, so the patch encoder's FPS (which starts at point 0) starts somewhere else each time.
    Randomness comes from ``np.random`` in training and a fixed seed (0) in evaluation, so
    evaluation is deterministic."""
    n = len(xyz)
    rng = np.random if train else np.random.RandomState(0)
    if n < k:
        idx = np.concatenate([np.arange(n), rng.randint(0, n, size=k - n)])
        return idx[np.random.permutation(k)] if train else idx
    if method == "fps":
        start = int(rng.randint(n)) if train else 0
        return farthest_point_sample(torch.from_numpy(np.asarray(xyz, dtype=np.float64)), k, start).numpy()
    return np.sort(rng.permutation(n)[:k])


def normalize_xyz(xyz: np.ndarray, mode: str, unit: float = 1.0) -> tuple[np.ndarray, float]:
    """``sphere``: centroid to the origin, farthest point at radius 1; ``center``: centroid to the
    origin, divided by ``unit``; ``none``: divided by ``unit``. Returns the points and the radius
    before scaling (in units of ``unit``), which ``radius_feature`` hands to the encoder."""
    centred = xyz - xyz.mean(0)
    radius = float(np.sqrt((centred**2).sum(1).max())) if len(xyz) else 0.0
    if mode == "sphere":
        return centred / radius if radius > 0 else centred, radius / unit
    return (centred if mode == "center" else xyz) / unit, radius / unit


def rotation_about(axis: str, angle: float) -> np.ndarray:
    """3x3 rotation matrix by ``angle`` (radians) about the x, y or z axis."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def augment(
    xyz: np.ndarray,
    normals: np.ndarray | None,
    *,
    rotate_axis: str | None,
    scale: tuple[float, float] | None,
    jitter: float,
    jitter_clip: float | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Training augmentation from ``np.random``: a uniform rotation about ``rotate_axis`` (normals
    rotate too), one isotropic scale factor from ``scale``, per-point Gaussian jitter (sigma
    ``jitter``, clipped to +-``jitter_clip``)."""
    if rotate_axis is not None:
        rot = rotation_about(rotate_axis, np.random.uniform(0, 2 * np.pi))
        xyz = xyz @ rot.T
        if normals is not None:
            normals = (normals @ rot.T).astype(np.float32)
    if scale is not None:
        xyz = xyz * np.random.uniform(scale[0], scale[1])
    if jitter > 0:
        noise = np.random.normal(0.0, jitter, size=xyz.shape)
        xyz = xyz + (np.clip(noise, -jitter_clip, jitter_clip) if jitter_clip is not None else noise)
    return xyz, normals
