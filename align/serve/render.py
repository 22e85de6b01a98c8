"""Pictures of index items a browser cannot draw itself: molecules and point clouds.

The search page shows images, audio and video from the item's own file; a molecule (a SMILES string,
a ``.mol`` / ``.sdf`` / ``.smi`` file) or a point cloud (any file ``align.modalities.pointcloud_io``
reads) needs drawing first. ``render_item`` turns one item's metadata (what ``align index build``
recorded: ``path``, and for a SMILES column the SMILES string itself under ``path``) into
``(bytes, media_type)``, or None when there is nothing it can draw:

* molecules: rdkit's 2D depiction (``rdMolDraw2D.MolDraw2DSVG``), an SVG;
* graph files (``.graphml`` / ``.gml`` / ``.gexf``): a networkx spring layout (seed 0) drawn with PIL, a PNG;
* point clouds: an orthographic view from a fixed direction (azimuth 35 degrees, elevation 25), points
  sorted far to near and shaded by depth, drawn with PIL, a PNG.

Only the index's own metadata is read (the paths it recorded, as the item-file endpoint serves them),
never a path from a request. Drawing is deterministic: the same item gives the same bytes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

MAX_SMILES_CHARS = 4096  # as a search query's string bound
MAX_POINTS = 4096  # drawn per cloud: more only hides the shape under dots
SMILES_FILES = {".smi", ".smiles"}
MOL_FILES = {".mol", ".sdf", ".mol2"}
GRAPH_FILES = {".graphml", ".gml", ".gexf"}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def molecule_svg(smiles_or_mol: Any, width: int = 240, height: int = 180) -> str | None:
    """rdkit's 2D drawing of a SMILES string (or an rdkit ``Mol``) as SVG text; None when it does not parse."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = smiles_or_mol
    if isinstance(smiles_or_mol, str):
        if not smiles_or_mol.strip() or len(smiles_or_mol) > MAX_SMILES_CHARS:
            return None
        RDLogger.DisableLog("rdApp.*")  # an unparsable string is answered with None, not a log line
        try:
            mol = Chem.MolFromSmiles(smiles_or_mol.strip())
        finally:
            RDLogger.EnableLog("rdApp.*")
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    drawer.drawOptions().clearBackground = True
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


def _molecule_from_file(path: Path):
    from rdkit import Chem

    suffix = path.suffix.lower()
    if suffix in SMILES_FILES:
        first = path.read_text(errors="replace").strip().splitlines()
        return first[0].split()[0] if first and first[0].split() else None
    if suffix == ".mol2":
        return Chem.MolFromMol2File(str(path))
    if suffix == ".sdf":
        return next(iter(Chem.SDMolSupplier(str(path))), None)
    return Chem.MolFromMolFile(str(path))


def graph_png(path: Path, size: int = 200) -> bytes:
    """A graph file's nodes and edges, laid out by networkx's spring layout (seed 0), as a PNG."""
    import networkx as nx
    from PIL import Image, ImageDraw

    from align.modalities.graph_io import read_graph_file

    graph = read_graph_file(path)
    pos = nx.spring_layout(graph, seed=0) if len(graph) else {}
    image = Image.new("RGB", (size, size), "white")
    if pos:
        xy = np.array(list(pos.values()), dtype=np.float64)
        lo, span = xy.min(0), np.ptp(xy, 0).max() or 1.0
        pad = 12
        at = {n: tuple(pad + (p - lo) / span * (size - 2 * pad)) for n, p in zip(pos, xy)}
        draw = ImageDraw.Draw(image)
        for a, b in graph.edges():
            draw.line([at[a], at[b]], fill=(120, 120, 120), width=1)
        r = 3 if len(graph) < 100 else 1
        for x, y in at.values():
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(31, 95, 170))
    return _png(image)


def pointcloud_png(points: np.ndarray, size: int = 200, azimuth: float = 35.0, elevation: float = 25.0) -> bytes:
    """An [N, >=3] cloud seen from (azimuth, elevation) degrees, orthographic, as a PNG: points drawn
    far to near, darker when farther, so the shape reads without a 3D viewer."""
    from PIL import Image, ImageDraw

    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    image = Image.new("RGB", (size, size), "white")
    if not len(xyz):
        return _png(image)
    if len(xyz) > MAX_POINTS:  # an even stride: deterministic, and keeps the cloud's spread
        xyz = xyz[np.linspace(0, len(xyz) - 1, MAX_POINTS).round().astype(int)]
    xyz = xyz - xyz.mean(0)
    a, e = math.radians(azimuth), math.radians(elevation)
    rot_z = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    view = xyz @ rot_z.T @ rot_x.T  # screen x = view x, screen up = view z, depth = view y
    radius = np.abs(view).max() or 1.0
    pad = 8
    sx = pad + (view[:, 0] / radius + 1) / 2 * (size - 2 * pad)
    sy = pad + (1 - (view[:, 2] / radius + 1) / 2) * (size - 2 * pad)
    depth = (view[:, 1] / radius + 1) / 2  # 0 near .. 1 far
    draw = ImageDraw.Draw(image)
    r = 2 if len(xyz) < 1500 else 1
    for i in np.argsort(-depth):  # far first, near drawn over it
        shade = int(30 + 170 * depth[i])
        draw.ellipse([sx[i] - r, sy[i] - r, sx[i] + r, sy[i] + r], fill=(shade, shade, min(255, shade + 60)))
    return _png(image)


def render_item(modality: str | None, metadata: dict[str, Any], size: int = 200) -> tuple[bytes, str] | None:
    """``(content, media_type)`` drawing one index item (``metadata`` as the index recorded it), or
    None when its modality is not one drawn here or it records nothing drawable. Errors reading a
    recorded file propagate (``SampleError``, ``OSError``): the service answers them as it answers an
    unreadable item file."""
    raw = metadata.get("smiles") or metadata.get("path")
    if not isinstance(raw, str) or not raw:
        return None
    path = Path(raw)
    if modality == "graph":
        suffix = path.suffix.lower()
        if suffix in GRAPH_FILES and path.is_file():
            return graph_png(path, size), "image/png"
        if suffix in SMILES_FILES | MOL_FILES and path.is_file():
            raw = _molecule_from_file(path)
        svg = molecule_svg(raw, width=size + size // 5, height=size)
        return (svg.encode(), "image/svg+xml") if svg is not None else None
    if modality == "pointcloud" and path.is_file():
        from align.modalities.pointcloud_io import read_cloud

        return pointcloud_png(read_cloud(path, mesh_points=2048).xyz, size), "image/png"
    return None
