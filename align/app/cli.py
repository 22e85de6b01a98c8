"""Command line: ``align COMMAND ...``, one subcommand per row of ``align.app.command_table``
(``align --help`` lists them). Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from align.app.command_table import add_commands
from align.cpu import apply_cpu_defaults
from align.io.manifest import TRUST_UNVERIFIED_ENV


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="Train and evaluate multi-modal encoders in one shared embedding space."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument(
        "--trust-unverified",
        action="store_true",
        help="load checkpoints that have no manifest.json (their files cannot be checked for damage)",
    )
    add_commands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_cpu_defaults()  # before any command imports torch: libgomp reads it once, when it loads
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug and --trust-unverified are accepted anywhere on the line, not only before the command
    debug, trust = "--debug" in argv, "--trust-unverified" in argv
    args, extra = parser.parse_known_args([a for a in argv if a not in ("--debug", "--trust-unverified")])
    args.debug = debug
    # dotted.key=value overrides may also come after options (argparse stops collecting them there)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        with trusting_unverified(trust):
            return args.func(args)
    except KeyboardInterrupt:
        print("align: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 -- the one place errors meet the user
        if args.debug:
            raise
        if _is_user_error(err):
            print(f"align: error: {err}", file=sys.stderr)
            return 2
        print(
            f"align: unexpected error: {type(err).__name__}: {err}\n"
            "(rerun with `align --debug ...` for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


@contextmanager
def trusting_unverified(trust: bool) -> Iterator[None]:
    """``--trust-unverified`` for this command only (the checkpoint loader reads the variable)."""
    before = os.environ.get(TRUST_UNVERIFIED_ENV)
    if trust:
        os.environ[TRUST_UNVERIFIED_ENV] = "1"
    try:
        yield
    finally:
        if trust and before is None:
            os.environ.pop(TRUST_UNVERIFIED_ENV, None)
        elif trust:
            os.environ[TRUST_UNVERIFIED_ENV] = before


def _is_user_error(err: Exception) -> bool:
    """Errors whose message already names the config key, file or row: printed as one line.
    (``FileNotFoundError`` / ``FileExistsError`` carry the path in their message too.)"""
    from align.errors import AlignError

    return isinstance(err, (AlignError, FileNotFoundError, FileExistsError))
