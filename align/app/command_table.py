"""Every ``align`` subcommand in one table: name -> help, argument builder, handler.

``align.app.cli.build_parser`` builds the parser from this table and nothing else, so a command
is added by adding a row here. A name with a space is a command of a group (``eval zeroshot``,
``index build``); ``GROUPS`` gives each group its help line. The modules named here import only
argparse-level things at module level: the heavy imports (torch, datasets, faiss) happen inside
the handlers, so ``align --help`` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from align.app import adapt_command, commands, crossval, index_commands, serve_command, train_commands, tune_commands


@dataclass(frozen=True)
class Command:
    name: str  # "train", or "GROUP NAME" for a command of a group
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


GROUPS: dict[str, str] = {
    "eval": "evaluate a checkpoint (zero-shot, retrieval, linear probe, every pair of modalities) or a baseline",
    "index": "build a FAISS index of a dataset's embeddings",
    "lora": "LoRA adapters of a fine-tuned run",
}

COMMANDS: tuple[Command, ...] = (
    Command("train", "train from a YAML config", train_commands.train_arguments, train_commands.train),
    Command(
        "data",
        "show what a config's datasets hold (rows, classes, samples, loss pairs) without training",
        train_commands.config_arguments,
        train_commands.show_data,
    ),
    Command(
        "demo",
        "train + evaluate image<->text on scikit-learn's digits",
        train_commands.demo_arguments,
        train_commands.demo,
    ),
    Command(
        "shards",
        "write a config's dataset as webdataset tar shards (for data.*.streaming: true)",
        train_commands.shards_arguments,
        train_commands.shards,
    ),
    Command("crossval", "k-fold cross-validation: train + eval once per fold", crossval.arguments, crossval.cli),
    Command("eval zeroshot", "zero-shot classification of a checkpoint", commands.eval_arguments, commands.eval_cli),
    Command("eval retrieval", "cross-modal retrieval of a checkpoint", commands.eval_arguments, commands.eval_cli),
    Command(
        "eval pairs",
        "retrieval between every pair of a checkpoint's modalities, as one table",
        commands.eval_arguments,
        commands.eval_cli,
    ),
    Command(
        "eval probe",
        "linear probe on a checkpoint's frozen embeddings (logistic regression, C by cross-validation)",
        commands.eval_arguments,
        commands.eval_cli,
    ),
    Command(
        "eval baseline",
        "supervised reference: logistic regression on data.train's labels, scored on eval.data",
        commands.baseline_arguments,
        commands.baseline_cli,
    ),
    Command(
        "index build", "encode a dataset column into an index folder", commands.build_arguments, commands.build_cli
    ),
    Command("index info", "what an index folder holds (verified first)", commands.info_arguments, commands.info_cli),
    Command(
        "index add",
        "append a dataset's rows to an index folder (atomic)",
        index_commands.add_arguments,
        index_commands.add_cli,
    ),
    Command(
        "index remove",
        "remove items from an index folder by id (atomic)",
        index_commands.remove_arguments,
        index_commands.remove_cli,
    ),
    Command(
        "interpolate",
        "weight-space interpolations of two checkpoints (WiSE-FT), each evaluated on eval configs",
        tune_commands.interpolate_arguments,
        tune_commands.interpolate_cli,
    ),
    Command(
        "lora merge",
        "fold a LoRA run's adapters into its base weights: a plain checkpoint",
        tune_commands.merge_arguments,
        tune_commands.merge_cli,
    ),
    Command(
        "export",
        "export a checkpoint: an align folder with a model card, open_clip files, or ONNX graphs per tower",
        tune_commands.export_arguments,
        tune_commands.export_cli,
    ),
    Command(
        "adapt",
        "few-shot adaptation: linear probes, Tip-Adapter(-F), CoOp, CoCoOp over shots and seeds",
        adapt_command.adapt_arguments,
        adapt_command.adapt_cli,
    ),
    Command("query", "search an index with a text / image / ... query", commands.query_arguments, commands.query_cli),
    Command(
        "serve",
        "HTTP search service over a checkpoint and its indexes",
        serve_command.serve_arguments,
        serve_command.serve_cli,
    ),
)


def add_commands(parser: argparse.ArgumentParser, table: tuple[Command, ...] = COMMANDS) -> None:
    """One subparser per row of ``table`` (groups made on first use); each sets ``args.func`` to
    its handler and ``args.command_name`` to its full name."""
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in table:
        *group, leaf = cmd.name.split(" ")
        where = sub
        if group:
            (g,) = group
            if g not in groups:
                gp = sub.add_parser(g, help=GROUPS[g], description=GROUPS[g])
                groups[g] = gp.add_subparsers(dest=f"{g}_command", required=True, metavar="COMMAND")
            where = groups[g]
        p = where.add_parser(leaf, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        p.set_defaults(func=cmd.handler, command_name=cmd.name)
