"""``label_names`` in a config: a list, or a mapping {name in the data: name shown}
(align/config/dataset.py); what cannot work is refused at load time naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from align.config.dataset import DatasetSpec
from align.config.schema import config_from_dict
from align.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo-digits.yaml"


def with_names(label_names, **train) -> dict:
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["data"]["train"].update(label_names=label_names, **train)
    return cfg


def test_a_mapping_is_a_valid_label_names():
    shown = {"zero": "nought", "one": "one", "two": "two"}
    cfg = config_from_dict(with_names(shown))
    assert cfg.data.train.label_names == shown
    assert list(cfg.data.train.label_names) == ["zero", "one", "two"]  # its order is kept: the id order


def test_a_mapping_showing_two_classes_alike_is_refused():
    with pytest.raises(ConfigError, match=r"data\.train.*label_names must be unique"):
        config_from_dict(with_names({"zero": "nought", "one": "nought"}))


def test_a_stream_takes_no_mapping():
    with pytest.raises(ValueError, match="label_names as a mapping .* give a list"):
        DatasetSpec(
            source="webdataset",
            data_files="shards/*.tar",
            streaming=True,
            columns={"audio": "wav"},
            label_column="json.label",
            label_names={"0": "zero", "1": "one"},
        )
