"""Config loading: shipped YAMLs validate; every mistake fails with a ConfigError naming its dotted
key; ``a.b=value`` overrides are parsed as YAML."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from align.config.schema import Config, config_from_dict, dump_config, load_config, parse_overrides
from align.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo-digits.yaml"
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def demo_dict() -> dict:
    return yaml.safe_load(DEMO.read_text())


def config_error(path=DEMO, overrides=None, base=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, base=base)
    return str(info.value)


def test_configs_dir_is_not_empty():
    assert DEMO in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.modalities
    for spec in (cfg.data.train, cfg.data.val, cfg.eval.data if cfg.eval else None):
        if spec is not None:
            assert set(spec.columns) <= set(cfg.model.modalities)


def test_demo_config_values():
    cfg = load_config(DEMO)
    assert cfg.model.embed_dim == 64
    assert set(cfg.model.modalities) == {"image", "text"}
    assert cfg.data.train.source == "sklearn-digits" and cfg.data.train.split == "train"
    assert cfg.eval.data.split == "test"
    assert cfg.train.steps == 600 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.loss_pairs() == [("image", "text")]
    # adapter options are validated and normalised by the adapter's own schema (defaults filled in)
    img = cfg.model.modalities["image"].options
    assert img["vision_cfg"]["patch_size"] == 4 and img["augment"] is True and img["model"] is None
    assert cfg.model.modalities["text"].options["pooling"] == "mean"


# --------------------------------------------------------------------------------------------
# every mistake names its dotted key
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("outptu_dir=runs/x", "outptu_dir"),
        ("model.embed_dimm=32", "model.embed_dimm"),
        ("model.modalities.image.haed=mlp", "model.modalities.image.haed"),
        ("train.batch_szie=8", "train.batch_szie"),
        ("data.train.colums={image: image}", "data.train.colums"),
        ("eval.zeroshot.templats=[x]", "eval.zeroshot.templats"),
        ("model.modalities.image.options.vison_cfg={width: 8}", "model.modalities.image.options.vison_cfg"),
        ("model.modalities.text.options.poolng=cls", "model.modalities.text.options.poolng"),
    ],
)
def test_misspelled_key(override, key):
    msg = config_error(overrides=[override])
    assert f"'{key}'" in msg
    assert "unknown key" in msg


@pytest.mark.parametrize(
    "modality, section, bad",
    [
        ("image", "vision_cfg", "patch_szie"),
        ("text", "text_cfg", "laers"),
    ],
)
def test_misspelled_open_clip_tower_key(modality, section, bad):
    msg = config_error(overrides=[f"model.modalities.{modality}.options.{section}.{bad}=4"])
    assert f"'model.modalities.{modality}.options.{section}'" in msg
    assert f"{section}.{bad}" in msg


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("train.steps=abc", "train.steps", "integer"),
        ("train.lr=-1", "train.lr", "greater than"),
        ("train.mixed_precision=fp8", "train.mixed_precision", "'bf16'"),
        ("model.modalities.image.head=mlpp", "model.modalities.image.head", "'mlp'"),
        ("model.modalities.image.options.output_dim=zero", "model.modalities.image.options.output_dim", "integer"),
        ("model.modalities.text.options.pooling=max", "model.modalities.text.options.pooling", "'cls'"),
        ("data.train.max_samples=0", "data.train.max_samples", "greater than"),
        ("eval.zeroshot.classnames=[one]", "eval.zeroshot.classnames", "at least 2"),
    ],
)
def test_wrong_type_or_value(override, key, words):
    msg = config_error(overrides=[override])
    assert f"'{key}'" in msg and words in msg


@pytest.mark.parametrize(
    "delete, key",
    [
        (("data", "train"), "data.train"),
        (("model", "modalities"), "model.modalities"),
        (("model",), "model"),
        (("eval", "zeroshot", "templates"), "eval.zeroshot.templates"),
    ],
)
def test_missing_required(delete, key):
    data = demo_dict()
    node = data
    for k in delete[:-1]:
        node = node[k]
    del node[delete[-1]]
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = str(info.value)
    assert f"'{key}'" in msg and "required" in msg.lower()


def test_missing_required_from_yaml_file(tmp_path):
    data = demo_dict()
    del data["data"]["train"]
    path = tmp_path / "no_train.yaml"
    path.write_text(yaml.safe_dump(data))
    msg = config_error(path)
    assert "'data.train'" in msg


@pytest.mark.parametrize(
    "override, key, modality",
    [
        ("data.train.columns.audio=wav", "data.train.columns.audio", "audio"),
        ("data.val={source: sklearn-digits, split: test, columns: {depth: image}}", "data.val.columns.depth", "depth"),
        ("eval.data.columns.audio=wav", "eval.data.columns.audio", "audio"),
        ("train.pairs=[[image, audio]]", "train.pairs[0]", "audio"),
        ("eval.zeroshot.query=audio", "eval.zeroshot.query", "audio"),
        ("eval.zeroshot.prompt_modality=audio", "eval.zeroshot.prompt_modality", "audio"),
        ("eval.retrieval.b=audio", "eval.retrieval.b", "audio"),
    ],
)
def test_column_or_pair_names_modality_the_model_lacks(override, key, modality):
    msg = config_error(overrides=[override])
    assert f"'{key}'" in msg and f"'{modality}'" in msg
    assert "image" in msg and "text" in msg  # lists what there is


def test_pair_without_train_column():
    data = demo_dict()
    data["model"]["modalities"]["extra"] = copy.deepcopy(data["model"]["modalities"]["text"])
    data["model"]["modalities"]["extra"]["adapter"] = "text"
    data["train"]["pairs"] = [["image", "extra"]]
    with pytest.raises(ConfigError, match=r"'train\.pairs\[0\]'.*'extra'.*data\.train\.columns"):
        config_from_dict(data)
    # and the same modality set is fine once the pair only names modalities with columns
    data["train"]["pairs"] = [["image", "text"]]
    assert config_from_dict(data).loss_pairs() == [("image", "text")]


@pytest.mark.parametrize(
    "override, key, name",
    [
        ("model.modalities.image.adapter=nope", "model.modalities.image.adapter", "nope"),
        ("model.modalities.smell={options: {}}", "model.modalities.smell.adapter", "smell"),
        ("model.modalities.image.adapter=not-an-identifier", "model.modalities.image.adapter", "not-an-identifier"),
    ],
)
def test_unknown_adapter(override, key, name):
    msg = config_error(overrides=[override])
    assert f"'{key}'" in msg and f"'{name}'" in msg
    assert "'image'" in msg and "'text'" in msg  # the known adapters are listed


def test_adapter_cross_field_error_names_options_key():
    msg = config_error(overrides=["model.modalities.image.options.model=ViT-B-32"])
    assert "'model.modalities.image.options'" in msg and "exactly one" in msg


def test_adapter_validation_can_be_skipped():
    cfg = load_config(DEMO, ["model.modalities.image.options.vison_cfg=1"], validate_adapters=False)
    assert cfg.model.modalities["image"].options["vison_cfg"] == 1


def test_several_errors_are_all_reported():
    msg = config_error(overrides=["train.batch_szie=8", "train.steps=abc"])
    assert "'train.batch_szie'" in msg and "'train.steps'" in msg


# --------------------------------------------------------------------------------------------
# overrides and files
# --------------------------------------------------------------------------------------------


def test_parse_overrides_values_are_yaml():
    parsed = dict(
        parse_overrides(
            [
                "train.steps=7",
                "train.lr=0.01",
                "train.compile=true",
                "train.grad_clip=null",
                "train.betas=[0.8, 0.9]",
                "output_dir=runs/x=y",
                "model.modalities.image.options.mean=[0.5,0.5,0.5]",
                "data.train.columns={image: img}",
                " seed = 3",
                "train.pairs=[[image, text]]",
                "name='007'",
            ]
        )
    )
    assert parsed == {
        "train.steps": 7,
        "train.lr": 0.01,
        "train.compile": True,
        "train.grad_clip": None,
        "train.betas": [0.8, 0.9],
        "output_dir": "runs/x=y",
        "model.modalities.image.options.mean": [0.5, 0.5, 0.5],
        "data.train.columns": {"image": "img"},
        "seed": 3,
        "train.pairs": [["image", "text"]],
        "name": "007",
    }
    assert type(parsed["train.steps"]) is int and type(parsed["train.lr"]) is float


def test_overrides_apply_to_loaded_config():
    cfg = load_config(
        DEMO,
        [
            "train.steps=7",
            "train.lr=0.01",
            "train.compile=true",
            "train.grad_clip=null",
            "train.betas=[0.8, 0.9]",
            "output_dir=runs/other",
            "model.modalities.image.options.vision_cfg.layers=1",
            "data.train.max_samples=100",
            "train.pairs=[[text, image]]",
        ],
    )
    assert cfg.train.steps == 7 and cfg.train.lr == 0.01 and cfg.train.compile is True
    assert cfg.train.grad_clip is None and cfg.train.betas == (0.8, 0.9)
    assert cfg.output_dir == "runs/other" and cfg.data.train.max_samples == 100
    opts = cfg.model.modalities["image"].options
    assert opts["vision_cfg"]["layers"] == 1 and opts["vision_cfg"]["width"] == 96  # sibling kept
    assert cfg.loss_pairs() == [("text", "image")]
    # a new section can be created by an override
    cfg = load_config(
        DEMO,
        ["data.val.source=sklearn-digits", "data.val.split=test", "data.val.columns={image: image, text: caption}"],
    )
    assert cfg.data.val.split == "test" and cfg.data.val.columns == {"image": "image", "text": "caption"}


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.steps", "dotted.key=value"),
        ("train.steps.inner=1", "'train.steps' is not a section"),
    ],
)
def test_bad_overrides(override, words):
    assert words in config_error(overrides=[override])


def test_base_dict_is_not_mutated_by_overrides():
    base = demo_dict()
    before = copy.deepcopy(base)
    cfg = load_config(None, ["train.steps=5", "model.modalities.image.options.vision_cfg.layers=1"], base=base)
    assert cfg.train.steps == 5
    assert base == before


def test_bad_files(tmp_path):
    assert "not found" in config_error(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert "not valid YAML" in config_error(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    assert "mapping" in config_error(listy)


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(DEMO, ["train.steps=9", "train.pairs=[[image, text]]"])
    out = tmp_path / "config.yaml"
    dump_config(cfg, out)
    again = load_config(out)
    assert again.model_dump() == cfg.model_dump()
    assert again.train.steps == 9


def test_val_split_must_feed_the_training_modalities():
    msg = config_error(overrides=["data.val={source: sklearn-digits, split: test, columns: {image: image}}"])
    assert "data.val.columns" in msg


def test_duplicate_class_names_are_refused():
    msg = config_error(overrides=["eval.zeroshot.classnames=[zero, one, one]"])
    assert "eval.zeroshot" in msg and "one" in msg
