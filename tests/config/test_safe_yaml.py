"""Config YAML is read with bounds: a 500-byte "billion laughs" alias bomb, an oversized file and a
recursive alias are refused naming the file, while the anchors and merge keys the shipped configs
use still load. The bomb is loaded in a child process under an address-space cap, so a regression
fails the test instead of eating the machine's memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from align.config import safe_yaml
from align.config.safe_yaml import load_yaml_file, load_yaml_text
from align.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


SMALL = (
    "model:\n  modalities:\n    text: {options: {text_cfg: {width: 8, heads: 2, layers: 1}}}\n"
    "    image:\n      options:\n        vision_cfg: {width: 8}\n"
    "data: {train: {source: csv, columns: {image: a, text: b}}}\n"
)


def alias_bomb(levels: int = 9) -> str:
    """A config whose image tower options hold 9**levels strings through ``levels`` nested aliases
    (adapter options are validated and dumped when the config loads: that is where it expands)."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"            {names[0]}: &{names[0]} [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    lines += [
        f"            {cur}: &{cur} [{','.join(f'*{prev}' for _ in range(9))}]" for prev, cur in zip(names, names[1:])
    ]
    return SMALL.replace("{width: 8}", "\n          width: 8\n          act_kwargs:\n" + "\n".join(lines) + "\n")


CHILD = textwrap.dedent(
    """
    import resource, sys
    from align.config.schema import load_config
    from align.errors import ConfigError
    load_config(sys.argv[2])  # imports what loading needs (torch maps GiBs) before the cap
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
    cap = vm * 1024 + (1 << 30)  # 1 GiB more: plenty for a config, a sliver of what the bomb expands to
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        load_config(sys.argv[1])
    except ConfigError as err:
        print("ConfigError:", err)
    except MemoryError:
        print("MemoryError")
    """
)


def test_alias_bomb_is_refused_naming_the_file_without_eating_memory(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(alias_bomb())
    (tmp_path / "small.yaml").write_text(SMALL)
    assert path.stat().st_size < 1000
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tmp_path / "small.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0 and out.startswith("ConfigError:"), out[-2000:]
    assert str(path) in out and "alias" in out, out


def test_small_documents_with_aliases_and_merge_keys_still_load():
    text = "base: &base {source: csv, split: train}\nval: {<<: *base, split: test}\nnames: &n [a, b]\nagain: *n\n"
    data = load_yaml_text(text, "inline")
    assert data["val"] == {"source": "csv", "split": "test"} and data["again"] == ["a", "b"]


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_within_the_bounds(path):
    load_yaml_file(path)


def test_expanded_size_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(safe_yaml, "MAX_NODES", 50)
    with pytest.raises(ConfigError, match=r"^small\.yaml: refused: .*more than 50 values"):
        load_yaml_text("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [*a, *a, *a, *a, *a]\n", "small.yaml")


def test_recursive_alias_and_deep_nesting_are_refused():
    with pytest.raises(ConfigError, match=r"^r\.yaml: refused: .*refers to itself"):
        load_yaml_text("a: &a [1, *a]\n", "r.yaml")
    with pytest.raises(ConfigError, match=r"^deep\.yaml: .*nested"):
        load_yaml_text("[" * 5000 + "]" * 5000, "deep.yaml")


def test_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_yaml, "MAX_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: refused: 204 bytes, more than a config's limit of 100"):
        load_yaml_file(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml_file(tmp_path / "absent.yaml")


def test_overrides_are_bounded_and_bad_yaml_in_one_is_a_config_error():
    from align.config.schema import parse_overrides

    assert parse_overrides(["train.steps=5", "train.pairs=[[image, text]]"]) == [
        ("train.steps", 5),
        ("train.pairs", [["image", "text"]]),
    ]
    with pytest.raises(ConfigError, match=r"override 'train\.pairs=\[oops'"):
        parse_overrides(["train.pairs=[oops"])
