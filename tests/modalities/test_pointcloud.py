"""Point clouds: every input format (files written with numpy / trimesh, real DALES .xyz files from
the original tar.xz), sampling (FPS, fewer-points padding), normalisation, training-only
augmentation, errors that name the file, both encoders (shapes, permutation invariance, batched
FPS = per-cloud loop, batch independence), the ``packed-npz`` source, ``on_error: skip``, and a
tiny point cloud <-> text run on real DALES objects that must beat chance clearly."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from align.config.dataset import DatasetSpec
from align.errors import DataError, SampleError
from align.modalities import build_adapter
from align.modalities.layers import farthest_point_sample as fps_torch
from align.modalities.pointcloud_io import read_cloud
from align.registry import ADAPTERS


def farthest_point_sample(xyz: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """The shared torch FPS on one numpy cloud (as the workers call it)."""
    return fps_torch(torch.from_numpy(np.asarray(xyz, dtype=np.float64)), k, start).numpy()


def fps_reference(xyz: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Textbook greedy farthest-point sampling, one point at a time (the check for the vectorised one)."""
    idx, dist = [start], np.full(len(xyz), np.inf)
    for _ in range(k - 1):
        dist = np.minimum(dist, ((xyz - xyz[idx[-1]]) ** 2).sum(1))
        idx.append(int(dist.argmax()))
    return np.array(idx)


DALES = Path(__file__).resolve().parents[3] / "shared" / "data" / "pointcloud" / "dales_objects"
NPZ = DALES / "dales_objects_499.npz"
TAR = DALES / "pointclouds-500_xyz.tar.xz"
CLASSES = ["building", "car", "fence", "pole", "tree"]
pytestmark = pytest.mark.skipif(not NPZ.is_file() or not TAR.is_file(), reason=f"DALES objects not in {DALES}")


def pre(**options):
    return build_adapter("pointcloud", options).preprocessor()


@pytest.fixture(scope="module")
def cloud():
    """300 float32 points with rgb (uint8), unit normals and intensity."""
    rng = np.random.default_rng(0)
    xyz = (rng.normal(size=(300, 3)) * [3.0, 2.0, 1.0] + [100.0, -50.0, 7.0]).astype(np.float32)
    rgb = rng.integers(0, 256, (300, 3)).astype(np.uint8)
    normals = rng.normal(size=(300, 3))
    normals = (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32)
    intensity = rng.uniform(0, 200, 300).astype(np.float32)
    return xyz, rgb, normals, intensity


def write_pcd(path: Path, cols: dict[str, np.ndarray], types: dict[str, str], data: str = "ascii") -> Path:
    n = len(next(iter(cols.values())))
    header = [
        "# .PCD v0.7",
        "VERSION 0.7",
        "FIELDS " + " ".join(cols),
        "SIZE " + " ".join("4" for _ in cols),
        "TYPE " + " ".join(types.get(c, "F") for c in cols),
        "COUNT " + " ".join("1" for _ in cols),
        f"WIDTH {n}",
        "HEIGHT 1",
        "VIEWPOINT 0 0 0 1 0 0 0",
        f"POINTS {n}",
        f"DATA {data}",
    ]
    rows = [
        " ".join(f"{v:.9g}" if types.get(c, "F") == "F" else str(int(v)) for c, v in zip(cols, vals))
        for vals in zip(*cols.values())
    ]
    path.write_text("\n".join(header + rows) + "\n")
    return path


# ---- formats -----------------------------------------------------------------------------------


def test_point_formats_round_trip_to_the_same_tensor(tmp_path, cloud):
    import trimesh

    xyz, rgb, normals, intensity = cloud
    rgb01 = rgb / 255.0
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    np.savetxt(tmp_path / "a.xyz", np.c_[xyz, intensity], fmt="%.9g")
    np.savetxt(tmp_path / "b.txt", np.c_[xyz, rgb], fmt="%.9g", delimiter=",", header="x,y,z,r,g,b", comments="")
    np.save(tmp_path / "c.npy", np.c_[xyz, normals])
    np.savez(tmp_path / "d.npz", points=xyz, colors=rgb, normals=normals, intensity=intensity)
    xs = {a: xyz[:, i] for i, a in enumerate("xyz")}
    nf = {f"normal_{a}": normals[:, i] for i, a in enumerate("xyz")}
    write_pcd(tmp_path / "pcl.pcd", {**xs, "rgb": packed, "intensity": intensity, **nf}, {"rgb": "U"})
    write_pcd(tmp_path / "o3d.pcd", {**xs, "rgb": packed.view(np.float32), **nf}, {})  # Open3D: float bits
    trimesh.PointCloud(xyz, colors=np.c_[rgb, np.full(300, 255, np.uint8)]).export(tmp_path / "e.ply")
    header = (
        "ply\nformat ascii 1.0\nelement vertex 300\n"
        + "".join(f"property float {p}\n" for p in ("x", "y", "z", "nx", "ny", "nz", "intensity"))
        + "end_header\n"
    )
    body = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in np.c_[xyz, normals, intensity])
    (tmp_path / "f.ply").write_text(header + body + "\n")

    expect = {
        "a.xyz": {"intensity": intensity[:, None]},
        "b.txt": {"rgb": rgb01},
        "c.npy": {"normal": normals},
        "d.npz": {"rgb": rgb01, "normal": normals, "intensity": intensity[:, None]},
        "pcl.pcd": {"rgb": rgb01, "normal": normals, "intensity": intensity[:, None]},
        "o3d.pcd": {"rgb": rgb01, "normal": normals},
        "e.ply": {"rgb": rgb01},
        "f.ply": {"normal": normals, "intensity": intensity[:, None]},
    }
    for name, feats in expect.items():
        got = read_cloud(tmp_path / name, mesh_points=10)
        np.testing.assert_allclose(got.xyz, xyz, rtol=1e-7, err_msg=name)
        assert sorted(got.features) == sorted(feats), name
        for f, ref in feats.items():
            np.testing.assert_allclose(got.features[f], ref, rtol=1e-6, atol=1e-7, err_msg=f"{name} {f}")

    p = pre(num_points=128, features=["rgb", "normal", "intensity"])
    ref = p({"points": xyz.tolist(), "colors": rgb, "normals": normals, "intensity": intensity}, train=False)
    assert ref.shape == (128, 10) and ref.dtype == torch.float32
    torch.testing.assert_close(p(tmp_path / "d.npz", train=False), ref)
    torch.testing.assert_close(p(str(tmp_path / "pcl.pcd"), train=False), ref)
    named = pre(num_points=128, features=["rgb", "normal", "intensity"], point_columns=["rgb", "normal", "intensity"])
    torch.testing.assert_close(named(np.c_[xyz, rgb, normals, intensity], train=False), ref)
    with pytest.raises(SampleError, match="has no"):  # 7 extra columns and no point_columns: no guess
        p(np.c_[xyz, rgb, normals, intensity], train=False)
    plain = pre(num_points=128)
    xyz_ref = plain(xyz, train=False)
    torch.testing.assert_close(xyz_ref, ref[:, :3])
    for raw in [*(tmp_path / n for n in expect), torch.from_numpy(xyz), xyz.tolist(), xyz.reshape(-1).tolist()]:
        torch.testing.assert_close(plain(raw, train=False), xyz_ref, msg=str(raw)[:60])


@pytest.mark.parametrize("ext", ["ply", "off", "obj", "stl", "glb"])
def test_meshes_are_sampled_on_their_surface(tmp_path, ext):
    import trimesh

    half = np.array([1.0, 0.5, 0.25])
    mesh = trimesh.creation.box(extents=2 * half)
    mesh.visual.face_colors = [255, 0, 0, 255]
    path = tmp_path / f"box.{ext}"
    mesh.export(path)
    p = pre(num_points=256, mesh_points=1024, normalize="none", features=["normal"])
    out = p(path, train=False).numpy()
    xyz, nrm = out[:, :3], out[:, 3:]
    assert out.shape == (256, 6)
    np.testing.assert_allclose(np.abs(xyz / half).max(1), 1.0, atol=1e-5)  # on the surface
    assert np.abs(((xyz + 0.01 * nrm) / half)).max(1).min() > 1.0  # normals point outwards
    assert np.abs(((xyz - 0.01 * nrm) / half)).max(1).max() <= 1.0 + 1e-5
    assert (np.abs(xyz) > 0.5 * half).any(0).all()  # spread over the box, not one face
    torch.testing.assert_close(p(path, train=False), torch.from_numpy(out))  # seed 0 in eval
    np.random.seed(1)
    assert not np.allclose(p(path, train=True).numpy(), out)  # a fresh surface sample in training
    if ext == "ply":  # face colours
        rgb = pre(num_points=64, features=["rgb"])(path, train=False)[:, 3:]
        torch.testing.assert_close(rgb, torch.tensor([1.0, 0.0, 0.0]).expand(64, 3))


def test_dales_xyz_files_equal_the_npz_copy(tmp_path):
    z = np.load(NPZ)
    ids = list(z["ids"])
    with tarfile.open(TAR) as tar:
        members = [tar.getmember(f"pointclouds-500/{i:03d}.xyz") for i in (9, 307)]
        tar.extractall(tmp_path, members=members, filter="data")
    for m in members:
        i = ids.index(int(Path(m.name).stem))
        ref = z["points"][z["offsets"][i] : z["offsets"][i + 1]]
        got = read_cloud(tmp_path / m.name, mesh_points=1)
        assert got.xyz.shape == ref.shape and not got.features
        np.testing.assert_array_equal(got.xyz.astype(np.float32), ref)
        p = pre(num_points=256, normalize="center")
        torch.testing.assert_close(p(tmp_path / m.name, train=False), p(ref, train=False), atol=1e-5, rtol=0)


# ---- sampling, normalisation, augmentation ------------------------------------------------------


def test_fps_picks_spread_points_and_is_deterministic_in_eval():
    rng = np.random.default_rng(0)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    pts = np.concatenate([rng.normal(0, 0.01, (500, 3)), corners])
    assert set(farthest_point_sample(pts, 9)[1:]) == set(range(500, 508))

    square = rng.uniform(size=(2000, 3)) * [1, 1, 0]

    def min_gap(idx):
        d = np.linalg.norm(square[idx, None] - square[None, idx], axis=-1)
        return d[np.triu_indices(len(idx), 1)].min()

    fps_gap = min_gap(farthest_point_sample(square, 64))
    assert fps_gap > 2 * max(min_gap(rng.choice(2000, 64, replace=False)) for _ in range(20))
    p = pre(num_points=64)
    out = p(square, train=False)
    assert torch.equal(p(square, train=False), out)  # eval: FPS from point 0
    starts = set()
    for seed in range(5):
        np.random.seed(seed)
        a = p(square, train=True)
        np.random.seed(seed)
        assert torch.equal(p(square, train=True), a)  # reproducible from the per-sample seed
        starts.add(tuple(a[0].tolist()))
    assert len(starts) > 1
    rnd = pre(num_points=64, sampling="random")
    assert torch.equal(rnd(square, train=False), rnd(square, train=False))


def test_fewer_points_keep_all_and_repeat_random_ones():
    pts = np.random.default_rng(1).normal(size=(10, 3))
    p = pre(num_points=32, normalize="none")
    out = p(pts, train=False).numpy()
    assert out.shape == (32, 3)
    np.testing.assert_allclose(out[:10], pts, rtol=1e-6)  # every point once, in order
    assert all(np.isclose(pts, row, rtol=1e-6).all(1).any() for row in out[10:])  # then repeats
    assert len(np.unique(out[10:], axis=0)) > 3  # of randomly chosen points
    assert np.array_equal(p(pts, train=False).numpy(), out)


def test_normalisation_modes():
    pts = np.random.default_rng(2).normal(size=(500, 3)) * 20 + 1000
    sphere = pre(num_points=500)(pts, train=False).numpy()
    np.testing.assert_allclose(sphere.mean(0), 0, atol=1e-5)
    assert abs(np.linalg.norm(sphere, axis=1).max() - 1) < 1e-6
    center = pre(num_points=500, normalize="center", unit=10.0)(pts, train=False).numpy()
    np.testing.assert_allclose(center.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(center, axis=1).max() * 10, np.linalg.norm(pts - pts.mean(0), axis=1).max(), rtol=1e-5
    )
    none = pre(num_points=500, normalize="none", sampling="random")(pts, train=False).numpy()
    np.testing.assert_allclose(np.sort(none, 0), np.sort(pts, 0).astype(np.float32), rtol=1e-6)
    radius = pre(num_points=500, radius_feature=True)(pts, train=False).numpy()
    assert radius.shape == (500, 4)
    true_radius = np.linalg.norm(pts - pts.mean(0), axis=1).max()
    np.testing.assert_allclose(radius[:, 3], np.log1p(true_radius), rtol=1e-6)


def test_augmentation_only_in_training(cloud):
    xyz, _, normals, _ = cloud
    raw = {"points": xyz, "normals": normals}
    aug = pre(num_points=128, features=["normal"], rotate_up=True, up_axis="z", scale=[0.8, 1.2], jitter=0.01)
    plain = pre(num_points=128, features=["normal"])
    ref = plain(raw, train=False)
    assert torch.equal(aug(raw, train=False), ref)
    np.random.seed(0)
    state = np.random.get_state()
    rot = pre(num_points=128, features=["normal"], rotate_up=True)
    np.random.set_state(state)
    a = plain(raw, train=True)
    np.random.set_state(state)
    b = rot(raw, train=True)  # same FPS start, then a rotation about z only
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b[:, 2], a[:, 2])
    torch.testing.assert_close(b[:, :2].norm(dim=1), a[:, :2].norm(dim=1))
    torch.testing.assert_close((b[:, :3] * b[:, 3:]).sum(1), (a[:, :3] * a[:, 3:]).sum(1))  # normals turn too
    scaled = [aug(raw, train=True)[:, :3].norm(dim=1).max().item() for _ in range(10)]
    assert min(scaled) < 0.95 and max(scaled) > 1.05


# ---- errors name the file -----------------------------------------------------------------------


def test_bad_samples_raise_sample_error_naming_the_file(tmp_path):
    pts = np.random.default_rng(3).normal(size=(100, 3))
    nan = pts.copy()
    nan[5, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.savetxt(tmp_path / "few.xyz", pts[:4])
    (tmp_path / "corrupt.ply").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "truncated.off").write_text("OFF\n3 1 0\n0 0 0\n1 1\n")
    (tmp_path / "empty.obj").write_text("")
    write_pcd(tmp_path / "binary.pcd", {a: pts[:, i] for i, a in enumerate("xyz")}, {}, data="binary")
    np.savetxt(tmp_path / "plain.xyz", pts)
    cases = [
        ("nan.npy", {}, "NaN"),
        ("few.xyz", {"min_points": 10}, "fewer than min_points 10"),
        ("corrupt.ply", {}, "cannot read mesh"),
        ("truncated.off", {}, "cannot read mesh"),
        ("empty.obj", {}, "cannot read mesh|no geometry"),
        ("binary.pcd", {}, "only ascii"),
        ("plain.xyz", {"features": ["rgb"]}, r"has no \['rgb'\]"),
        ("missing.npy", {}, "no such file"),
    ]
    for name, options, match in cases:
        with pytest.raises(SampleError, match=match) as info:
            pre(num_points=16, **options)(tmp_path / name, train=False)
        assert name in str(info.value), (name, str(info.value))
    assert pre(num_points=16, drop_nonfinite=True)(tmp_path / "nan.npy", train=False).isfinite().all()
    for raw in ([[1.0, 2.0]], {"colors": pts}, "", 5, np.zeros((0, 3))):
        with pytest.raises(SampleError):
            pre(num_points=16)(raw, train=False)


# ---- encoders -----------------------------------------------------------------------------------

TINY_PATCH = {
    "encoder": "patch",
    "num_points": 128,
    "num_groups": 16,
    "group_size": 16,
    "width": 32,
    "layers": 1,
    "heads": 2,
    "token_widths": [16, 32],
}


def test_batched_fps_equals_per_cloud_loop():
    x = torch.randn(5, 200, 3, dtype=torch.float64)
    idx = fps_torch(x, 24)
    loop = torch.stack([fps_torch(c[None], 24)[0] for c in x])
    assert torch.equal(idx, loop)
    for c, i in zip(x.numpy(), idx):
        assert np.array_equal(farthest_point_sample(c, 24), i.numpy())  # the workers' [N, 3] path
        assert np.array_equal(fps_reference(c, 24), i.numpy())
    starts = torch.tensor([3, 0, 7, 199, 50])
    assert torch.equal(fps_torch(x, 24, starts)[:, 0], starts)
    for c, s, i in zip(x.numpy(), starts.tolist(), fps_torch(x, 24, starts)):
        assert np.array_equal(fps_reference(c, 24, s), i.numpy())


@pytest.mark.parametrize(
    "options",
    [
        {"num_points": 128, "widths": [16, 32], "pooling": "maxmean"},
        TINY_PATCH,
        {**TINY_PATCH, "pooling": "mean", "norm": "layer"},
    ],
)
def test_encoders_shapes_gradients_and_batch_independence(options):
    torch.manual_seed(0)
    adapter = build_adapter("pointcloud", {**options, "features": ["intensity"]})
    x = torch.randn(4, 128, 4)
    out = adapter(x)
    assert out.shape == (4, adapter.feature_dim)
    assert adapter.feature_dim == (64 if "widths" in options else 32)  # maxmean doubles the width
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in adapter.parameters())
    adapter.eval()
    with torch.no_grad():
        alone = torch.cat([adapter(c[None]) for c in x])
        torch.testing.assert_close(adapter(x), alone, rtol=1e-4, atol=1e-5)
        if options.get("encoder") != "patch":  # max/mean pooling: point order does not matter
            torch.testing.assert_close(adapter(x[:, torch.randperm(128)]), alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, N, 4\]"):
        adapter(x[..., :3])


def test_options_are_validated():
    from pydantic import ValidationError

    assert ADAPTERS.get("pointcloud").__name__ == "PointCloudAdapter"
    cases = [
        ({"width": 64}, "do not apply to encoder 'pointnet'"),
        ({"encoder": "patch", "widths": [8]}, "patch"),
        ({"pooling": "cls"}, "not for encoder"),
        ({"encoder": "patch", "width": 30, "heads": 4}, "divisible"),
        ({"encoder": "patch", "num_points": 32, "num_groups": 64}, "num_groups"),
        ({"scale": [1.2, 0.8]}, "scale"),
        ({"features": ["rgb", "rgb"]}, "duplicates"),
        ({"unit": 10.0}, "unit"),
        ({"features": ["color"]}, "features"),
        ({"num_point": 5}, "num_point"),
    ]
    for options, match in cases:
        with pytest.raises(ValidationError, match=match):
            build_adapter("pointcloud", options)


# ---- packed-npz source --------------------------------------------------------------------------


def test_packed_npz_layouts_splits_and_errors(tmp_path):
    from align.data.tables import load_table

    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 30, 40)
    points = rng.normal(size=(sizes.sum(), 3)).astype(np.float32)
    colors = rng.integers(0, 256, (sizes.sum(), 3)).astype(np.uint8)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    labels = np.arange(40) % 4
    np.savez(
        tmp_path / "a.npz",
        points=points,
        offsets=bounds,
        labels=labels,
        ids=np.arange(40) + 100,
        class_names=np.array(["a", "b", "c", "d"]),
        colors=colors,
    )
    np.savez(tmp_path / "starts.npz", points=points, offsets=bounds[:-1], labels=labels)
    np.savez(tmp_path / "bad.npz", points=points, offsets=bounds[:-3], labels=labels)

    def spec(file, split="all", **kw):
        return DatasetSpec(
            source="packed-npz",
            data_files=str(tmp_path / file),
            split=split,
            columns={"pointcloud": "points"},
            load_kwargs=kw,
        )

    t = load_table(spec("a.npz", per_point={"colors": "colors"}))
    assert t.features["label"].names == ["a", "b", "c", "d"] and t["id"][:3] == [100, 101, 102]
    for i in (0, 17, 39):
        np.testing.assert_array_equal(np.asarray(t[i]["points"], np.float32), points[bounds[i] : bounds[i + 1]])
        np.testing.assert_array_equal(t[i]["colors"], colors[bounds[i] : bounds[i + 1]])
    starts = load_table(spec("starts.npz"))
    assert starts["points"] == t["points"] and "id" not in starts.column_names
    flat = load_table(spec("a.npz", flat=True))
    assert flat[3]["points"] == np.asarray(t[3]["points"], np.float32).reshape(-1).tolist()
    p = pre(num_points=32)
    assert torch.equal(p(flat[3]["points"], train=False), p(t[3]["points"], train=False))
    train, test = load_table(spec("a.npz", "train")), load_table(spec("a.npz", "test"))
    assert len(train) == 32 and len(test) == 8 and not set(train["id"]) & set(test["id"])
    assert np.bincount(test["label"]).tolist() == [2, 2, 2, 2]
    folds = [set(load_table(spec("a.npz", "test", folds=4, fold=k))["id"]) for k in range(4)]
    assert set().union(*folds) == set(range(100, 140)) and sum(map(len, folds)) == 40
    for s, match in [
        (spec("bad.npz"), "bad.npz.*offsets"),
        (spec("a.npz", columns={"y": "nope"}), "nope"),
        (spec("nothere.npz"), "nothere.npz"),
        (spec("a.npz", color="x"), "unknown load_kwargs"),
    ]:
        with pytest.raises(DataError, match=match):
            load_table(s)


def test_on_error_skip_counts_bad_files(tmp_path, caplog):
    from align.data.tables import Collator, PairedDataset, load_table

    pts = np.random.default_rng(4).normal(size=(50, 3))
    for i in range(3):
        np.save(tmp_path / f"good{i}.npy", pts + i)
    (tmp_path / "corrupt.stl").write_bytes(b"solid x\nfacet normal 0 0\n")
    np.save(tmp_path / "nan.npy", np.full((50, 3), np.nan))
    table = load_table(DatasetSpec(source="files", data_files=str(tmp_path / "*"), columns={"pointcloud": "path"}))
    names = [Path(p).name for p in table["path"]]
    p = {"pointcloud": pre(num_points=32)}
    ds = PairedDataset(table, {"pointcloud": "path"}, p, train=False, on_error="skip", name="eval.data")
    with caplog.at_level("WARNING", logger="align.data.tables"):
        batch = Collator(p)([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 2 and batch["pointcloud"].shape == (3, 32, 3)
    assert [names[i] for i in batch["index"]] == ["good0.npy", "good1.npy", "good2.npy"]
    assert "corrupt.stl" in caplog.text and "nan.npy" in caplog.text
    with pytest.raises(SampleError, match=r"row \d, column 'path' \(pointcloud\).*corrupt\.stl"):
        PairedDataset(table, {"pointcloud": "path"}, p, train=False)[names.index("corrupt.stl")]


# ---- learning on real DALES objects -------------------------------------------------------------


def test_tiny_pointnet_learns_dales_zero_shot(tmp_path, capsys):
    from align.app.cli import main
    from align.app.trainer import train
    from align.config.schema import config_from_dict

    templates = ["an aerial lidar scan of a {}.", "a point cloud of a {}.", "lidar points of a {}."]

    def data(split, temps):
        return {
            "source": "packed-npz",
            "data_files": str(NPZ),
            "split": split,
            "load_kwargs": {"flat": True},
            "columns": {"pointcloud": "points", "text": "label_captions"},
            "label_column": "label",
            "caption_templates": temps,
        }

    cfg = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "model": {
            "embed_dim": 32,
            "modalities": {
                "pointcloud": {
                    "options": {
                        "num_points": 128,
                        "sampling": "random",
                        "normalize": "center",
                        "unit": 10.0,
                        "widths": [32, 64],
                        "pooling": "maxmean",
                        "rotate_up": True,
                    }
                },
                "text": {
                    "options": {
                        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
                        "output_dim": 32,
                    }
                },
            },
        },
        "data": {"train": data("train", templates)},
        "train": {
            "batch_size": 32,
            "steps": 150,
            "lr": 3e-3,
            "warmup_steps": 10,
            "weight_decay": 0.0,
            "progress": False,
            "log_every": 10,
        },
        "eval": {
            "data": data("test", templates[:1]),
            "zeroshot": {"query": "pointcloud", "classnames": CLASSES, "templates": templates},
        },
    }
    t0 = time.perf_counter()
    result = train(config_from_dict(cfg))
    losses = [v for _, v in result.losses]
    assert main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "zeroshot.json").read_text())["metrics"]
    with capsys.disabled():
        print(
            f"\nDALES tiny PointNet: loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}, "
            f"zero-shot top-1 {report['top1']:.3f} (n={report['n']}), {time.perf_counter() - t0:.0f} s"
        )
    assert report["n"] == 100
    assert report["top1"] > 0.6, report["top1"]  # 100 held-out objects, chance 0.20
