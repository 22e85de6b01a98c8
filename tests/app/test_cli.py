"""The command table (align.app.command_table) is the whole command line: every row is a parser
subcommand and every subcommand a row, each --help works, and `align --help` imports no torch."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from align.app.cli import build_parser, main
from align.app.command_table import COMMANDS, GROUPS, Command, add_commands

REPO = Path(__file__).resolve().parents[2]


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """``{"eval zeroshot": parser, ...}``: every subcommand without subcommands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(prefix): parser}
    out = {}
    for action in subs:
        for name, child in action.choices.items():
            out.update(leaf_commands(child, (*prefix, name)))
    return out


def test_table_is_the_parser():
    table = [c.name for c in COMMANDS]
    assert len(table) == len(set(table)), "a command listed twice"
    leaves = leaf_commands(build_parser())
    assert set(leaves) == set(table)  # both ways: no parser-only command, no table-only row
    groups = {c.name.split(" ")[0] for c in COMMANDS if " " in c.name}
    assert groups == set(GROUPS)
    # the hidden module entry points are commands now
    assert {"shards", "eval baseline"} <= set(table)
    for cmd in COMMANDS:  # each leaf runs its own row's handler
        assert leaves[cmd.name].get_default("func") is cmd.handler
        assert leaves[cmd.name].get_default("command_name") == cmd.name


def test_a_row_added_is_a_command():
    extra = Command("eval noop", "does nothing", lambda p: p.add_argument("--x", type=int), lambda args: args.x)
    parser = argparse.ArgumentParser(prog="align")
    add_commands(parser, (*COMMANDS, extra))
    args = parser.parse_args(["eval", "noop", "--x", "7"])
    assert args.func(args) == 7 and args.command_name == "eval noop"


@pytest.mark.parametrize("name", [c.name for c in COMMANDS] + sorted(GROUPS) + [""])
def test_help(name, capsys):
    argv = [*name.split(), "--help"] if name else ["--help"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: align {name}".rstrip()), out[:200]
    if name in GROUPS:
        assert all(c.name.split(" ")[1] in out for c in COMMANDS if c.name.startswith(name + " "))
    elif name:
        assert next(c.help for c in COMMANDS if c.name == name)[:40] in " ".join(out.split())
    else:  # the top level lists every command and group
        assert all(c.name.split(" ")[0] in out for c in COMMANDS)


def test_help_imports_no_torch():
    code = (
        "import sys\nfrom align.app.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for name in ['eval', 'index', 'query']:\n"
        "    try:\n        main([name, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = sorted(m for m in ('torch', 'datasets', 'faiss', 'open_clip', 'sklearn') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_module_entry_point_runs_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "align", "eval", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "baseline" in out.stdout, out.stderr


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "zeroshoot", "--checkpoint", "x"])
    assert exit_.value.code == 2
    assert "invalid choice: 'zeroshoot'" in capsys.readouterr().err


def test_eval_baseline_on_citeseer(capsys, monkeypatch):
    """`align eval baseline` (was `python -m align.eval.baselines`) on the real CiteSeer split."""
    monkeypatch.chdir(REPO)  # the config reads ../shared/data from the checkout root
    assert main(["eval", "baseline", "configs/citeseer-node-text.yaml"]) == 0
    out = capsys.readouterr().out
    assert "on raw node features" in out and "trained on 120 rows of graph-nodes split 'train'" in out, out
    assert "on 1000 rows of graph-nodes split 'test' (6 classes" in out, out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(0.593, abs=5e-4)  # the README figure; chance 0.17


def test_eval_baseline_refuses_a_config_without_eval(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["eval", "baseline", "configs/citeseer-node-text.yaml", "eval=null"]) == 2
    assert "no eval section" in capsys.readouterr().err


def test_shards_refuses_a_missing_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["shards", "configs/fsdd-audio-text.yaml", str(tmp_path / "out"), "--key", "data.val"]) == 2
    assert "has no data.val" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
