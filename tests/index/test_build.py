"""``align query`` and the checkpoint an index was built with (issue 21 item 5): a damaged checkpoint
is reported as damaged, naming its file (its own manifest check), never as "built with a different
model", while a valid other checkpoint is "a different model"; an untouched index queries the same
every time. A tiny open_clip image<->text model, saved untrained; 24 sklearn digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align.app.cli import main
from align.config.schema import config_from_dict
from align.errors import ConfigError
from align.index.build import IndexBuildError, build_index, parse_data_spec, query_index
from align.model.align_model import AlignModel
from align.model.checkpoint import CheckpointError, save_checkpoint, write_manifest
from tests.support.tiny import TINY_MODALITIES

DATA = (
    "{source: sklearn-digits, split: test, max_samples: 24, columns: {image: image, text: caption}, "
    "label_column: label}"
)


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path]:
    """(checkpoint, index folder built from it)."""
    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "seed": 3,
            "model": {"embed_dim": 16, "modalities": TINY_MODALITIES},
            "data": {"train": parse_data_spec(DATA).model_dump(exclude_unset=True)},
            "train": {"steps": 1},
        }
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints", 1, AlignModel(cfg.model), cfg)
    index = build_index(ckpt, parse_data_spec(DATA), "image", progress=False)
    return ckpt, index.save(tmp_path / "idx")


def flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_is_named_as_damaged_not_as_another_model(built, capsys):
    from safetensors.torch import load_file, save_file

    ckpt, folder = built
    weights = load_file(ckpt / "model.safetensors")
    flip(ckpt / "model.safetensors")
    for checkpoint in (None, str(ckpt)):  # the one the index records, and the same one passed explicitly
        with pytest.raises(CheckpointError, match=r"model.safetensors: content is damaged") as err:
            query_index(folder, "text", "a seven", k=3, checkpoint=checkpoint)
        assert "different model" not in str(err.value)
    assert main(["query", "--index", str(folder), "--text", "a seven"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt / 'model.safetensors'}: content is damaged" in err and "different model" not in err
    # the control: a valid checkpoint, just not the one the index was built with, is another model
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"step": "1"})
    write_manifest(ckpt, 1)
    with pytest.raises(IndexBuildError, match=r"built with a different model"):
        query_index(folder, "text", "a seven", k=3)


def test_untouched_index_queries_identically(built, capsys):
    import json

    ckpt, folder = built
    first = query_index(folder, "text", "a seven", k=5)
    assert len(first) == 5 and query_index(folder, "text", "a seven", k=5, checkpoint=str(ckpt)) == first
    record = json.loads((folder / "content.json").read_text())
    assert record["count"] == 24 and record["dim"] == 16 and record["model"].endswith(str(ckpt.resolve()))
    assert main(["query", "--index", str(folder), "--text", "a seven", "-k", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_data_spec_yaml_is_read_with_the_config_bounds():
    """`align index build --data` goes through the same bounded YAML reader as configs: an alias bomb
    (9 levels, 9**9 strings once expanded) is refused before it is built."""
    levels = "abcdefghi"
    lines = ["a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    lines += [f"{cur}: &{cur} [{','.join(f'*{prev}' for _ in range(9))}]" for prev, cur in zip(levels, levels[1:])]
    with pytest.raises(ConfigError, match=r"^--data: refused: .*more than"):
        parse_data_spec("\n".join(lines))
