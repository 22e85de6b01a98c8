"""The ``train``, ``data``, ``demo`` and ``shards`` subcommands: argument parsing and printing only,
on top of ``align.app.trainer``, ``align.data.summary``, ``align.app.demo`` and ``align.data.shards``.
Everything heavy is imported inside the handlers (see ``align.app.command_table``)."""

from __future__ import annotations

import argparse


def config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides (values parsed as YAML)")


def train_arguments(p: argparse.ArgumentParser) -> None:
    config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    p.add_argument("--dry-run", action="store_true", help="load the data and show it (as `align data`); do not train")


def train(args: argparse.Namespace) -> int:
    from align.config.schema import load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        return _show(cfg)
    from align.app.trainer import train as run_training

    result = run_training(cfg, resume=args.resume)
    if result.losses and result.is_main_process:
        print(
            f"done: step {result.losses[-1][0]}, loss {result.losses[-1][1]:.4f}, checkpoint {result.final_checkpoint}"
        )
    return 0


def _show(cfg) -> int:
    from align.data.summary import format_summary, load_and_summarize

    print(format_summary(load_and_summarize(cfg)))
    return 0


def show_data(args: argparse.Namespace) -> int:
    from align.config.schema import load_config

    return _show(load_config(args.config, args.overrides))


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the demo config")


def demo(args: argparse.Namespace) -> int:
    from align.app.demo import format_table, run_demo

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    metrics = run_demo(args.out, overrides)
    print(format_table(metrics))
    print(f"wrote {args.out}/metrics.json, loss.png, confusion.png")
    return 0


SHARD_KEYS = ("data.train", "data.val", "eval.data")


def shards_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a config YAML whose dataset to write")
    p.add_argument("out_dir", help="folder for PREFIX-000000.tar, ...")
    p.add_argument("--key", default="data.train", choices=SHARD_KEYS, help="which dataset (default data.train)")
    p.add_argument("--prefix", default="shard", help="shard file prefix (default shard)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the rows are shuffled with this seed before "
        "writing, so every shard (and a stream's head) mixes the classes",
    )
    p.add_argument("--keep-order", action="store_true", help="write the rows in table order")


def shards(args: argparse.Namespace) -> int:
    from align.config.schema import load_config
    from align.data.shards import table_rows, write_shards
    from align.data.tables import load_table
    from align.errors import AlignError, DataError

    cfg = load_config(args.config, validate_adapters=False)
    spec = {"data.train": cfg.data.train, "data.val": cfg.data.val, "eval.data": cfg.eval.data if cfg.eval else None}[
        args.key
    ]
    if spec is None:
        raise DataError(f"{args.config} has no {args.key}")
    try:
        table = load_table(spec, args.key)
        table = table if args.keep_order else table.shuffle(seed=args.seed)
        paths = write_shards(table_rows(table, spec), args.out_dir, args.shard_size, args.prefix)
    except AlignError:
        raise
    except (ValueError, OSError) as err:  # a row or a file that cannot be written: one line, exit 2
        raise DataError(str(err)) from err
    print(f"wrote {len(table)} samples of {args.key} in {len(paths)} shards: {paths[0]} .. {paths[-1].name}")
    return 0
