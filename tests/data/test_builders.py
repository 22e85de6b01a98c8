"""Which names reach ``datasets.load_dataset``, and what a file the csv builder cannot read says.
A misspelled source (``imagefoldr``) fails at once with "did you mean" and the known names instead of
a Hub lookup that times out offline; Hub ids (owner/name) and local paths still go to load_dataset;
a PNG or binary file given to ``source: csv`` is a DataError naming the file; a malformed text CSV
names its data_files and the parser's reason, not "An error occurred while generating the dataset"."""

from __future__ import annotations

import io

import datasets
import pytest

from align.config.dataset import DatasetSpec
from align.data.tables import load_table
from align.errors import DataError


def spec(source: str, **kw) -> DatasetSpec:
    return DatasetSpec(source=source, columns={"text": "caption"}, **kw)


@pytest.fixture
def no_hub(monkeypatch):
    """load_dataset replaced: records the names that reach it and returns a one-column table."""
    calls = []

    def fake(path, **kwargs):
        calls.append(path)
        return datasets.Dataset.from_dict({"caption": ["a", "b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_a_misspelled_source_fails_at_once_with_did_you_mean(no_hub):
    with pytest.raises(DataError) as info:
        load_table(spec("imagefoldr"), "data.train")
    message = str(info.value)
    assert no_hub == [], "the misspelling was sent to the Hub"
    assert message.startswith("config key 'data.train.source': unknown source 'imagefoldr'"), message
    assert "did you mean 'imagefolder'?" in message and "sklearn-digits" in message and "parquet" in message
    with pytest.raises(DataError, match="did you mean 'sklearn-digits'"):
        load_table(spec("sklearn-digit"), "data.val")
    with pytest.raises(DataError, match="owner/name") as info:
        load_table(spec("no such thing at all"), "data.train")
    assert "did you mean" not in str(info.value)


def test_hub_ids_builders_and_local_paths_still_reach_load_dataset(no_hub, tmp_path):
    (tmp_path / "folder").mkdir()
    for name in ("someone/some-set", "csv", "imagefolder", str(tmp_path / "folder")):
        assert len(load_table(spec(name), "data.train")) == 2
    assert no_hub == ["someone/some-set", "csv", "imagefolder", str(tmp_path / "folder")]


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, kind",
    [("x.png", png_bytes(), "a PNG image"), ("data.csv", bytes(range(256)) * 40, "binary data")],
    ids=["png", "binary"],
)
def test_a_non_csv_file_is_named(tmp_path, name, content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_table(spec("csv", data_files=str(path)), "data.train")
    message = str(info.value)
    assert message.startswith(f"config key 'data.train.data_files': not a CSV file: {path} ({kind}"), message


def test_a_malformed_csv_names_its_files_and_the_reason(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("caption,label\na,1\nb,2,3,4\n")
    with pytest.raises(DataError) as info:
        load_table(spec("csv", data_files=str(path)), "data.train")
    message = str(info.value)
    assert message.startswith("config key 'data.train.data_files': source 'csv' cannot read"), message
    assert str(path) in message and "Expected 2 fields" in message, message


def test_a_good_csv_loads(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("caption,label\nhello,1\nworld,2\n")
    table = load_table(spec("csv", data_files=str(path)), "data.train")
    assert table["caption"] == ["hello", "world"]
