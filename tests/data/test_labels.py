"""``label_names`` and zero-shot ``classnames`` are matched to the data's class names by name, never by
position (align/data/labels.py), on every source kind that gives a ClassLabel (imagefolder and
audiofolder trees built here from real files, a parquet file with a ClassLabel feature, a builtin) and
on string labels: spelling may differ in case, '_', '-' and spaces; the given order becomes the id
order with every row keeping its class; a name that matches nothing is refused naming the key."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

from align.config.dataset import DatasetSpec
from align.data.labels import zeroshot_classes
from align.data.streaming import stream_row
from align.data.tables import load_table
from align.errors import ConfigError, DataError, SampleError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
PHOTOS = SHARED / "image" / "skimage_clip8" / "images"
FSDD = SHARED / "audio" / "fsdd" / "recordings"

pytestmark = pytest.mark.skipif(not (PHOTOS.is_dir() and FSDD.is_dir()), reason="shared data missing")

# folder -> real files in it; imagefolder sorts the folders: coffee-cup, house_cat, motor_bike
PHOTO_CLASSES = {"house_cat": ["chelsea.png"], "motor_bike": ["motorcycle_right.png"], "coffee-cup": ["coffee.png"]}
# FSDD digits as audiofolder classes written with '_' (sorted: digit_one, digit_two, digit_zero)
SPOKEN = {"digit_zero": "0", "digit_one": "1", "digit_two": "2"}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for folder, files in PHOTO_CLASSES.items():
        (root / folder).mkdir()
        for f in files:
            shutil.copy(PHOTOS / f, root / folder / f)
    return root


@pytest.fixture(scope="module")
def spoken_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spoken")
    for folder, digit in SPOKEN.items():
        (root / folder).mkdir()
        for wav in sorted(FSDD.glob(f"{digit}_theo_*.wav"))[:2]:
            shutil.copy(wav, root / folder / wav.name)
    return root


def spec(tmp_path, **kw) -> DatasetSpec:
    kw.setdefault("load_kwargs", {"cache_dir": str(tmp_path / "hf")})
    kw.setdefault("label_column", "label")
    return DatasetSpec(**kw)


def name_key(name: str) -> str:
    """One class's spellings alike: 'Coffee Cup' ~ 'coffee-cup' ~ 'coffee_cup'."""
    return re.sub(r"[\s_-]+", " ", name).strip().lower()


def folder_of(row: dict, column: str) -> str:
    return Path(row[column]["path"]).parent.name


def test_imagefolder_label_names_are_matched_by_name_and_give_the_order(photo_dir, tmp_path):
    names = ["house cat", "Motor Bike", "coffee cup"]  # not the folders' (sorted) order nor spelling
    table = load_table(
        spec(
            tmp_path,
            source="imagefolder",
            data_dir=str(photo_dir),
            columns={"image": "image", "text": "label_captions"},
            label_names=names,
            caption_templates=["a photo of a {}."],
        )
    )
    assert table.features["label"].names == names  # the given spelling, in the given order
    assert len(table) == 3
    for row in table:  # every row keeps its own class: named as its folder is
        assert name_key(names[row["label"]]) == name_key(folder_of(row, "image"))
        assert row["label_captions"] == [f"a photo of a {names[row['label']]}."]
    coffee = next(r for r in table if folder_of(r, "image") == "coffee-cup")
    assert coffee["label"] == 2 and coffee["label_captions"] == ["a photo of a coffee cup."]


def test_audiofolder_label_names_rename_no_row_by_position(spoken_dir, tmp_path):
    names = ["digit zero", "Digit-One", "digit two"]
    table = load_table(
        spec(
            tmp_path,
            source="audiofolder",
            data_dir=str(spoken_dir),
            columns={"audio": "audio", "text": "label_captions"},
            label_names=names,
            caption_templates=["the sound of {}."],
        )
    )
    assert table.features["label"].names == names
    assert len(table) == 6
    for row in table:
        folder = folder_of(row, "audio")
        assert names[row["label"]] == names[list(SPOKEN).index(folder)]  # digit_zero -> 0, ...
        assert Path(row["audio"]["path"]).name.startswith(SPOKEN[folder] + "_")  # the recording's digit
        assert row["label_captions"] == [f"the sound of {names[row['label']]}."]


def test_a_mapping_renames_every_folder_in_its_order(spoken_dir, tmp_path):
    shown = {"Digit Two": "two", "digit_zero": "zero", "digit-one": "one"}
    table = load_table(
        spec(tmp_path, source="audiofolder", data_dir=str(spoken_dir), columns={"audio": "audio"}, label_names=shown)
    )
    assert table.features["label"].names == ["two", "zero", "one"]
    for row in table:
        assert (
            table.features["label"].names[row["label"]]
            == {"0": "zero", "1": "one", "2": "two"}[SPOKEN[folder_of(row, "audio")]]
        )
    partial = {"digit_zero": "zero", "digit_one": "one"}
    with pytest.raises(DataError, match=r"data\.train\.label_names.*missing \['digit_two'\]"):
        load_table(
            spec(
                tmp_path,
                source="audiofolder",
                data_dir=str(spoken_dir),
                columns={"audio": "audio"},
                label_names=partial,
            )
        )


@pytest.mark.parametrize(
    "names, problem",
    [
        (["house cat", "motor bike", "tea cup"], r"missing \['coffee-cup'\], not in the data \['tea cup'\]"),
        (["house cat", "motor bike"], r"missing \['coffee-cup'\]"),
        (["house cat", "motor bike", "coffee cup", "dog"], r"not in the data \['dog'\]"),
        (["house cat", "House-Cat", "motor bike"], r"'house cat' and 'House-Cat' both name 'house_cat'"),
    ],
    ids=["misnamed", "missing", "extra", "twice"],
)
def test_names_that_do_not_match_are_refused_showing_both_lists(photo_dir, tmp_path, names, problem):
    with pytest.raises(DataError, match=r"config key 'data\.train\.label_names'") as info:
        load_table(
            spec(tmp_path, source="imagefolder", data_dir=str(photo_dir), columns={"image": "image"}, label_names=names)
        )
    message = str(info.value)
    assert str(names) in message and "['coffee-cup', 'house_cat', 'motor_bike']" in message
    assert re.search(problem, message), message


def test_a_parquet_classlabel_is_matched_by_name(tmp_path):
    import datasets
    from sklearn.datasets import load_iris

    iris = load_iris()
    features = datasets.Features(
        {
            "features": datasets.Sequence(datasets.Value("float64")),
            "label": datasets.ClassLabel(names=list(iris.target_names)),
        }
    )
    path = tmp_path / "iris.parquet"
    datasets.Dataset.from_dict(
        {"features": iris.data.tolist(), "label": iris.target.tolist()}, features=features
    ).to_parquet(path)
    names = ["Virginica", "setosa", "Versicolor"]
    table = load_table(
        spec(tmp_path, source="parquet", data_files=str(path), columns={"tabular": "features"}, label_names=names)
    )
    assert table.features["label"].names == names
    expected = np.asarray([names.index(n) for n in ["setosa", "Versicolor", "Virginica"]])[iris.target]
    assert table["label"] == expected.tolist()  # row i is still iris i's species
    assert np.allclose(np.asarray(table["features"]), iris.data)


def test_a_builtin_classlabel_is_matched_by_name(tmp_path):
    given = ["Cultivar-Three", "cultivar one", "cultivar_two"]
    plain = load_table(
        spec(tmp_path, source="sklearn-table", load_kwargs={"name": "wine"}, columns={"tabular": "features"})
    )
    named = load_table(
        spec(
            tmp_path,
            source="sklearn-table",
            load_kwargs={"name": "wine"},
            columns={"tabular": "features"},
            label_names=given,
        )
    )
    assert plain.features["label"].names == ["cultivar one", "cultivar two", "cultivar three"]
    assert named.features["label"].names == given
    assert [given[i] for i in named["label"]] == [
        ["cultivar one", "cultivar_two", "Cultivar-Three"][i] for i in plain["label"]
    ]


def test_string_labels_are_matched_by_name(tmp_path):
    path = tmp_path / "spoken.csv"
    files = sorted(FSDD.glob("[013]_jackson_1*.wav"))
    spelled = {"0": "digit_zero", "1": "Digit-One", "3": "digit three"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "word"])
        w.writerows([str(p), spelled[p.name[0]]] for p in files)
    names = ["digit one", "digit zero", "digit three"]
    table = load_table(
        spec(
            tmp_path,
            source="csv",
            data_files=str(path),
            columns={"audio": "path"},
            label_column="word",
            label_names=names,
        )
    )
    assert table.features["word"].names == names
    for row in table:
        assert (
            names[row["word"]] == {"0": "digit zero", "1": "digit one", "3": "digit three"}[Path(row["path"]).name[0]]
        )
    shown = {"Digit One": "one", "digit zero": "zero", "digit-three": "three"}  # a mapping: its keys, shown renamed
    renamed = load_table(
        spec(
            tmp_path,
            source="csv",
            data_files=str(path),
            columns={"audio": "path"},
            label_column="word",
            label_names=shown,
        )
    )
    assert renamed.features["word"].names == ["one", "zero", "three"] and renamed["word"] == table["word"]
    with pytest.raises(DataError, match=r"label_names': 'digit one' and 'Digit_One' are one class name"):
        load_table(
            spec(
                tmp_path,
                source="csv",
                data_files=str(path),
                columns={"audio": "path"},
                label_column="word",
                label_names=[*names, "Digit_One"],
            )
        )


def test_a_mapping_is_refused_for_bare_ids():
    ids = DatasetSpec(
        source="files",
        data_files=str(FSDD / "*_theo_0.wav"),
        load_kwargs={"pattern": r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"},
        columns={"audio": "path"},
        label_column="label",
        label_names={"0": "zero"},
    )
    with pytest.raises(DataError, match=r"label_names': a mapping renames .* bare class ids; give a list"):
        load_table(ids)


def test_a_streamed_string_label_is_matched_by_name():
    stream = DatasetSpec(
        source="webdataset",
        data_files="x.tar",
        streaming=True,
        columns={"text": "txt"},
        label_column="json.label",
        label_names=["children playing", "dog bark"],
    )
    row = stream_row({"json": {"label": "Dog_Bark"}, "txt": "woof", "__key__": "k", "__url__": "s.tar"}, stream)
    assert row["json.label"] == 1
    with pytest.raises(SampleError, match="label 'siren'"):
        stream_row({"json": {"label": "siren"}, "txt": "", "__key__": "k", "__url__": "s.tar"}, stream)


def test_the_citeseer_config_names_the_planetoid_classes_by_name(tmp_path):
    import yaml

    citeseer = SHARED / "graph" / "citeseer"
    if not (citeseer / "raw" / "ind.citeseer.graph").is_file():
        pytest.skip("shared CiteSeer data missing")
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "citeseer-node-text.yaml").read_text())
    train = {**cfg["data"]["train"], "data_dir": str(citeseer)}
    train["load_kwargs"] = {**train["load_kwargs"], "cache_dir": str(tmp_path / "cache")}
    raw = load_table(
        DatasetSpec(**{**train, "label_names": None, "caption_templates": None, "columns": {"graph": "graph"}})
    )
    table = load_table(DatasetSpec(**train))
    assert raw.features["label"].names == ["Agents", "AI", "DB", "IR", "ML", "HCI"]
    assert table.features["label"].names == list(train["label_names"].values())
    assert table["label"] == raw["label"]  # the mapping is in the data's order: every node keeps its id


CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_zeroshot_mapping_may_rename_only_some_classes():
    labels = np.arange(10)
    assert zeroshot_classes({"airplane": "aeroplane"}, CIFAR, labels) == ["aeroplane", *CIFAR[1:]]
    assert zeroshot_classes({"AirPlane": "aeroplane", "TRUCK": "lorry"}, CIFAR, labels) == [
        "aeroplane",
        *CIFAR[1:9],
        "lorry",
    ]
    with pytest.raises(
        ConfigError, match=r"classnames': \['aeroplane'\] match none of the data's class names \['airplane'"
    ):
        zeroshot_classes({"aeroplane": "plane"}, CIFAR, labels)


def test_zeroshot_list_is_matched_by_name_in_its_spelling():
    data = ["air_conditioner", "children_playing", "dog_bark"]
    given = ["Children Playing", "dog bark", "air conditioner"]
    assert zeroshot_classes(given, data, np.arange(3)) == ["air conditioner", "Children Playing", "dog bark"]
    with pytest.raises(ConfigError, match=r"missing \['dog_bark'\], not in the data \['siren'\]"):
        zeroshot_classes(["air conditioner", "children playing", "siren"], data, np.arange(3))
