"""The image adapter's options: a tower built from ``vision_cfg`` (and the text adapter's ``text_cfg``,
checked by the same helper) refuses a size that cannot build a tower at config load, naming the key,
instead of failing inside torch with a negative tensor dimension."""

from __future__ import annotations

import copy
import re

import pytest

from align.config.schema import config_from_dict
from align.errors import ConfigError
from tests.support.tiny import TINY_MODALITIES


def tiny_config(modality: str, cfg_key: str, field: str, value) -> dict:
    modalities = copy.deepcopy(TINY_MODALITIES)
    modalities[modality]["options"][cfg_key][field] = value
    return {
        "model": {"embed_dim": 32, "modalities": modalities},
        "data": {"train": {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}}},
    }


@pytest.mark.parametrize(
    "modality, cfg_key, field, value",
    [
        ("image", "vision_cfg", "width", -8),
        ("image", "vision_cfg", "layers", 0),
        ("image", "vision_cfg", "image_size", [16, -16]),
        ("image", "vision_cfg", "mlp_ratio", -1.0),
        ("text", "text_cfg", "width", -8),
        ("text", "text_cfg", "heads", 0),
        ("text", "text_cfg", "context_length", "eight"),
    ],
)
def test_tower_sizes_must_be_positive_naming_the_dotted_key(modality, cfg_key, field, value):
    with pytest.raises(ConfigError) as info:
        config_from_dict(tiny_config(modality, cfg_key, field, value))
    message = str(info.value)
    assert re.search(rf"config key 'model\.modalities\.{modality}\.options\.{cfg_key}\.{field}(\.\d+)?'", message), (
        message
    )
    assert len(message.splitlines()) == 2, message  # "invalid config:" and the one key


def test_positive_sizes_and_tuples_still_validate():
    data = tiny_config("image", "vision_cfg", "image_size", [16, 16])
    cfg = config_from_dict(data)
    assert cfg.model.modalities["image"].options["vision_cfg"]["image_size"] == [16, 16]
    assert cfg.model.modalities["text"].options["text_cfg"]["width"] == 32
