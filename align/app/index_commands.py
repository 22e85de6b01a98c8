"""The ``index add`` and ``index remove`` subcommands (``align.index.lifecycle``): change a saved index
folder atomically instead of rebuilding it. Imports the library inside the call (the CLI stays light)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an index folder (align index build --out)")
    p.add_argument("--data", required=True, help="dataset spec (YAML file or inline YAML) of the rows to append")
    p.add_argument("--checkpoint", help="default: the checkpoint the index records (another model is refused)")
    p.add_argument("--batch-size", type=int, default=256)


def add_cli(args: argparse.Namespace) -> int:
    from align.index.build import parse_data_spec
    from align.index.lifecycle import add_rows

    out = add_rows(args.folder, parse_data_spec(args.data), args.checkpoint, args.batch_size)
    skipped = f"; skipped {out['skipped']} rows that failed to load" if out["skipped"] else ""
    print(
        f"added {out['added']} items (ids {out['first_id']}..{out['first_id'] + out['added'] - 1}) to "
        f"{args.folder}: {out['count']} in all{skipped}"
    )
    return 0


def remove_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an index folder (align index build --out)")
    p.add_argument("--ids", required=True, help="comma-separated item ids to remove, e.g. 3,17,42")


def remove_cli(args: argparse.Namespace) -> int:
    from align.errors import ConfigError
    from align.index.lifecycle import remove_ids

    try:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ids {args.ids!r}: expected comma-separated integers, e.g. 3,17,42") from None
    out = remove_ids(args.folder, ids)
    print(f"removed {out['removed']} items from {args.folder}: {out['count']} left")
    return 0
