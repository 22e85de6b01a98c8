"""Command line: ``align train | demo | eval | crossval | index | query``. Heavy imports happen
inside the commands."""
from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from align.config.schema import load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        return _show_data(cfg)
    from align.app.trainer import train

    result = train(cfg, resume=args.resume)
    if result.losses and result.is_main_process:
        print(f"done: step {result.losses[-1][0]}, loss {result.losses[-1][1]:.4f}, "
              f"checkpoint {result.final_checkpoint}")
    return 0


def _show_data(cfg) -> int:
    from align.data.summary import format_summary, load_and_summarize

    print(format_summary(load_and_summarize(cfg)))
    return 0


def _data(args: argparse.Namespace) -> int:
    from align.config.schema import load_config

    return _show_data(load_config(args.config, args.overrides))


def _demo(args: argparse.Namespace) -> int:
    from align.app.demo import format_table, run_demo

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    metrics = run_demo(args.out, overrides)
    print(format_table(metrics))
    print(f"wrote {args.out}/metrics.json, loss.png, confusion.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="Train and evaluate multi-modal "
                                     "encoders in one shared embedding space.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides (values parsed as YAML)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    p.add_argument("--dry-run", action="store_true", help="load the data and show it (as `align data`); "
                   "do not train")
    p.set_defaults(func=_train)
    a = sub.add_parser("data", help="show what a config's datasets hold (rows, classes, samples, loss "
                       "pairs) without training")
    a.add_argument("config", help="YAML config file")
    a.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    a.set_defaults(func=_data)
    d = sub.add_parser("demo", help="train + evaluate image<->text on scikit-learn's digits")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    d.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the demo config")
    d.set_defaults(func=_demo)
    from align.app.commands import add_eval_parser as add_eval, add_index_parsers as add_index
    from align.app.crossval import add_parser as add_crossval

    add_eval(sub)
    add_crossval(sub)
    add_index(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    # dotted.key=value overrides may also come after options (argparse stops collecting them there)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
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
        print(f"align: unexpected error: {type(err).__name__}: {err}\n"
              "(rerun with `align --debug ...` for the traceback, and please report it)", file=sys.stderr)
        return 1


def _is_user_error(err: Exception) -> bool:
    """Errors whose message already names the config key, file or row: printed as one line.
    (``FileNotFoundError`` / ``FileExistsError`` carry the path in their message too.)"""
    from align.errors import AlignError

    return isinstance(err, (AlignError, FileNotFoundError, FileExistsError))
