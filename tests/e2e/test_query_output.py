"""``align query`` prints what the data holds, so hostile data must not drive the terminal: an index
built from a CSV whose captions and labels hold escape codes (clear screen, window title) and a
newline followed by a fake result line prints exactly k lines with those characters escaped."""

from __future__ import annotations

import copy
import csv
import json

import yaml

from align.app.cli import main
from tests.support.tiny import TINY_MODALITIES

EVIL = [
    ("\x1b[2J\x1b]0;pwned\x07a cat\n  2. score 1.0000  id 99  caption=fake", "\x1b[31mred label"),
    ("a dog", "plain"),
    ("a bird\r\x1b[Kover-written", "\x9b2J c1 control"),
]


def test_query_escapes_control_characters_from_the_data(tmp_path, capsys):
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"embed_dim": 16, "modalities": copy.deepcopy(TINY_MODALITIES)},
        "data": {"train": {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}}},
        "train": {"batch_size": 16, "steps": 1, "progress": False, "eval_at_end": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    with open(tmp_path / "evil.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "label"])
        writer.writerows(EVIL)
    data = json.dumps(
        {
            "source": "csv",
            "data_files": str(tmp_path / "evil.csv"),
            "columns": {"text": "caption"},
            "label_column": "label",
        }
    )
    built = ["index", "build", "--checkpoint", str(tmp_path / "run"), "--modality", "text"]
    assert main([*built, "--data", data, "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["query", "--index", str(tmp_path / "idx"), "--text", "a cat", "-k", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.strip("\n").split("\n")
    assert len(lines) == 3, out
    assert [line.split(".")[0].strip() for line in lines] == ["1", "2", "3"], out
    assert not any(c in out for c in "\x1b\x07\r\x9b"), repr(out)
    assert "caption=\\x1b[2J\\x1b]0;pwned\\x07a cat\\n  2. score 1.0000  id 99  caption=fake" in out, out
    assert "label=\\x1b[31mred label" in out and "caption=a bird\\r\\x1b[Kover-written" in out, out
