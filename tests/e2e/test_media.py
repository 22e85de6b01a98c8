"""Audio and video through the whole toolkit with no special cases: HF audiofolder / videofolder
tables, the trainer on real FSDD recordings (learns: zero-shot well above chance on the official
test takes), `align index build --modality audio` and `align query --audio` / `--video`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from align.app.cli import main
from align.config.dataset import DatasetSpec
from align.config.schema import config_from_dict
from align.data.tables import Collator, PairedDataset, load_table

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FSDD = DATA / "audio" / "fsdd" / "recordings"
CLIPS = DATA / "video" / "mmaction2_clips"
PATTERN = r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

pytestmark = pytest.mark.skipif(not FSDD.is_dir() or not CLIPS.is_dir(), reason="shared data missing")

TINY_AST = {
    "sample_rate": 8000,
    "clip_seconds": 0.8,
    "n_mels": 32,
    "patch_size": 8,
    "patch_stride": 8,
    "width": 48,
    "layers": 2,
    "heads": 2,
}
TINY_TEXT = {
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "output_dim": 32,
}


def fsdd(where: dict, templates: list[str]) -> dict:
    return {
        "source": "files",
        "data_files": str(FSDD / "*.wav"),
        "load_kwargs": {"pattern": PATTERN},
        "where": where,
        "columns": {"audio": "path", "text": "label_captions"},
        "label_column": "label",
        "label_names": DIGITS,
        "caption_templates": templates,
    }


def test_audiofolder_and_videofolder_tables_feed_the_adapters(tmp_path):
    from align.modalities import build_adapter

    for i, wav in enumerate(sorted(FSDD.glob("*_theo_0.wav"))[:4]):
        (tmp_path / "audio" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, tmp_path / "audio" / str(i % 2) / wav.name)
    for name, copy in (("demo.mp4", "a.mp4"), ("test.avi", "b.avi")):  # no "test" in names: datasets
        (tmp_path / "video" / "clips").mkdir(parents=True, exist_ok=True)  # would call that a split
        shutil.copy(CLIPS / name, tmp_path / "video" / "clips" / copy)
    cache = {"cache_dir": str(tmp_path / "hf")}
    audio = load_table(
        DatasetSpec(
            source="audiofolder",
            data_dir=str(tmp_path / "audio"),
            columns={"audio": "audio"},
            label_column="label",
            load_kwargs=cache,
        )
    )
    pre = {"audio": build_adapter("audio", TINY_AST).preprocessor()}
    batch = Collator(pre)(
        [PairedDataset(audio, {"audio": "audio"}, pre, train=False, label_column="label")[i] for i in range(len(audio))]
    )
    assert batch["audio"].shape == (4, 32, 81) and batch["label"].tolist() == [0, 0, 1, 1]
    video = load_table(
        DatasetSpec(
            source="videofolder", data_dir=str(tmp_path / "video"), columns={"video": "video"}, load_kwargs=cache
        )
    )
    vpre = {
        "video": build_adapter(
            "video",
            {
                "frames": 4,
                "image": {
                    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
                    "output_dim": 32,
                },
            },
        ).preprocessor()
    }
    vbatch = Collator(vpre)([PairedDataset(video, {"video": "video"}, vpre, train=True)[i] for i in range(2)])
    assert vbatch["video"].shape == (2, 4, 3, 32, 32)


def test_fsdd_audio_text_learns_and_indexes(tmp_path, capsys):
    templates = ["a person saying the number {}.", "the spoken word {}.", "someone says {}."]
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "model": {"embed_dim": 32, "modalities": {"audio": {"options": TINY_AST}, "text": {"options": TINY_TEXT}}},
        "data": {"train": fsdd({"take": {"ge": 5}, "speaker": {"in": ["george", "jackson", "lucas"]}}, templates)},
        "train": {
            "batch_size": 32,
            "steps": 300,
            "lr": 1e-3,
            "warmup_steps": 20,
            "weight_decay": 0.0,
            "progress": False,
            "log_every": 10,
        },
        "eval": {
            "data": fsdd({"take": {"lt": 5}, "speaker": {"in": ["george", "jackson", "lucas"]}}, templates[:1]),
            "zeroshot": {"query": "audio", "classnames": DIGITS, "templates": templates},
        },
    }
    from align.app.trainer import train

    result = train(config_from_dict(cfg))
    losses = [v for _, v in result.losses]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    top1 = json.loads((tmp_path / "ev" / "zeroshot.json").read_text())["metrics"]["top1"]
    with capsys.disabled():
        print(
            f"\nFSDD tiny AST: loss {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f}, zero-shot {top1:.3f}"
        )
    assert top1 >= 0.35, top1  # 150 held-out takes, chance 0.10
    data = json.dumps(fsdd({"take": {"lt": 5}, "speaker": {"eq": "george"}}, templates[:1]))
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(tmp_path / "run"),
                "--modality",
                "audio",
                "--out",
                str(tmp_path / "index"),
                "--data",
                data,
            ]
        )
        == 0
    )
    assert (
        main(["query", "--index", str(tmp_path / "index"), "--text", "a person saying the number seven.", "-k", "3"])
        == 0
    )
    assert main(["query", "--index", str(tmp_path / "index"), "--audio", str(FSDD / "7_george_0.wav"), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "7_george_0.wav" in out.split("--audio")[-1] or out.rstrip().splitlines()[-1].find("7_george_0.wav") >= 0


def test_bad_recordings_are_skipped_and_counted(tmp_path, caplog):
    """on_error: skip with real FSDD files plus a truncated, a silent and an empty one: evaluation
    leaves exactly those rows out and counts them; the log names each file."""
    import datasets
    import numpy as np
    import soundfile as sf

    from align.modalities import build_adapter

    good = sorted(FSDD.glob("*_lucas_1.wav"))[:5]
    (tmp_path / "truncated.wav").write_bytes(good[0].read_bytes()[:100])
    sf.write(tmp_path / "silent.wav", np.zeros(4000, dtype=np.float32), 8000)
    (tmp_path / "empty.wav").write_bytes(b"")
    paths = [str(p) for p in good[:2]] + [str(tmp_path / n) for n in ("truncated.wav", "silent.wav", "empty.wav")]
    paths += [str(p) for p in good[2:]]
    table = datasets.Dataset.from_dict({"path": paths})
    pre = {"audio": build_adapter("audio", TINY_AST).preprocessor()}
    ds = PairedDataset(table, {"audio": "path"}, pre, train=False, on_error="skip", name="eval.data")
    with caplog.at_level("WARNING", logger="align.data.tables"):
        batch = Collator(pre)([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 3 and batch["index"].tolist() == [0, 1, 5, 6, 7]
    assert batch["audio"].shape[0] == 5
    for name in ("truncated.wav", "silent.wav", "empty.wav"):
        assert name in caplog.text
    with pytest.raises(Exception, match=r"row 2, column 'path' \(audio\).*truncated\.wav"):
        PairedDataset(table, {"audio": "path"}, pre, train=False, name="eval.data")[2]
