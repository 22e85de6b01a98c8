"""Every config on docs/YOUR_DATA.md runs as written: each layout is built under ``my_data/`` from
the real data in ../shared/data (FSDD recordings, the skimage photos with human captions, TU
MUTAG, DALES LiDAR objects, CiteSeer), then ``align data`` and a few training steps + the eval
section run from that folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from align.app.cli import main

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "YOUR_DATA.md"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared data missing")


def doc_configs() -> dict[str, str]:
    """``<!-- config: NAME -->`` followed by a yaml block, on the page."""
    text = DOC.read_text()
    return dict(re.findall(r"<!-- config: ([\w-]+) -->\s*```yaml\n(.*?)```", text, flags=re.S))


def fsdd_files(speakers: list[str], takes: range) -> list[Path]:
    return [DATA / "audio/fsdd/recordings" / f"{d}_{s}_{t}.wav" for s in speakers for d in range(10) for t in takes]


def build_folder_per_class(my: Path) -> None:
    for wav in fsdd_files(["jackson", "nicolas"], range(4)):
        digit = int(wav.name.split("_")[0])
        (my / "spoken" / DIGITS[digit]).mkdir(parents=True, exist_ok=True)
        (my / "spoken" / DIGITS[digit] / wav.name).symlink_to(wav)


def build_csv_of_paths(my: Path) -> None:
    (my / "wavs").symlink_to(DATA / "audio/fsdd/recordings")
    with open(my / "recordings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "word", "speaker"])
        for wav in fsdd_files(["george", "jackson", "lucas", "yweweler"], range(3)):
            digit, speaker, _ = wav.stem.split("_")
            w.writerow([f"my_data/wavs/{wav.name}", DIGITS[int(digit)], speaker])


def build_parquet_captions(my: Path) -> None:
    import pandas as pd

    src = DATA / "image/skimage_clip8"
    (my / "images").symlink_to(src / "images")
    captions = json.loads((src / "captions.json").read_text())
    rows = [{"image": f"my_data/images/{name}", "caption": text} for name, text in sorted(captions.items())]
    pd.DataFrame(rows[:5]).to_parquet(my / "train.parquet")
    pd.DataFrame(rows[5:]).to_parquet(my / "test.parquet")


FIELDS = [
    "agents",
    "artificial intelligence",
    "databases",
    "information retrieval",
    "machine learning",
    "human-computer interaction",
]


def build_big_graph(my: Path) -> None:
    """CiteSeer as a user would have it: a node table with string ids and text labels, an edge list."""
    import pandas as pd
    from torch_geometric.io import read_planetoid_data

    import align.modalities.graph_io  # noqa: F401  (quiets torch_geometric's import-time warning)

    g = read_planetoid_data(str(DATA / "graph/citeseer/raw"), "citeseer")
    split = np.where(g.train_mask, "train", np.where(g.val_mask, "val", np.where(g.test_mask, "test", "other")))
    ids = [f"paper-{i}" for i in range(g.num_nodes)]
    pd.DataFrame(
        {"node": ids, "words": list(g.x.numpy()), "field": [FIELDS[int(y)] for y in g.y], "split": split}
    ).to_parquet(my / "papers.parquet")
    src, dst = g.edge_index.numpy()
    pd.DataFrame({"source": [ids[i] for i in src], "target": [ids[i] for i in dst]}).to_csv(
        my / "citations.csv", index=False
    )


def build_tu_folder(my: Path) -> None:
    (my / "tu").symlink_to(DATA / "graph/tu")


def build_folder_of_meshes(my: Path) -> None:
    import trimesh

    z = np.load(DATA / "pointcloud/dales_objects/dales_objects_499.npz", allow_pickle=False)
    names = [str(n) for n in z["class_names"]]
    for c in range(len(names)):
        (my / "objects" / names[c]).mkdir(parents=True)
        for i in np.nonzero(z["labels"] == c)[0][:10]:
            pts = z["points"][z["offsets"][i] : z["offsets"][i + 1]]
            trimesh.PointCloud(pts).export(my / "objects" / names[c] / f"{int(z['ids'][i]):03d}.ply")


BUILDERS = {
    "folder-per-class": build_folder_per_class,
    "csv-of-paths": build_csv_of_paths,
    "parquet-captions": build_parquet_captions,
    "tu-folder": build_tu_folder,
    "big-graph": build_big_graph,
    "folder-of-meshes": build_folder_of_meshes,
}
BATCH = {"parquet-captions": 4}


def test_the_page_has_a_config_for_every_layout():
    assert set(doc_configs()) == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_doc_config_runs(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "my_data").mkdir()
    BUILDERS[name](tmp_path / "my_data")
    (tmp_path / "c.yaml").write_text(doc_configs()[name])
    assert main(["data", "c.yaml", "train.progress=false"]) == 0
    look = capsys.readouterr().out
    assert "data.train:" in look and "loss terms:" in look
    assert (
        main(
            [
                "train",
                "c.yaml",
                "train.steps=3",
                f"train.batch_size={BATCH.get(name, 16)}",
                "train.progress=false",
                "train.log_every=1",
            ]
        )
        == 0
    ), capsys.readouterr().err
    out = yaml_output_dir(tmp_path / "c.yaml")
    reports = sorted(p.name for p in (tmp_path / out / "eval").glob("*.json"))
    assert reports, "the eval section ran at the end of training and wrote its report"
    report = json.loads((tmp_path / out / "eval" / reports[0]).read_text())
    assert report["dataset"]["rows"] > 0 and report["dataset"]["source"]
    if report["task"] == "zeroshot":  # class names came from the data, in its id order
        assert report["metrics"]["classnames"] == report["dataset"]["classes"]


def yaml_output_dir(path: Path) -> str:
    import yaml

    return yaml.safe_load(path.read_text())["output_dir"]
