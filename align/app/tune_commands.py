"""``align interpolate`` and ``align lora merge``: parse and print; the work is ``align.eval.interpolate``
and ``align.model.lora_merge`` (imported in the call)."""

from __future__ import annotations

import argparse


def interpolate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="checkpoint at alpha 0 (e.g. the pretrained run)")
    p.add_argument("--to", dest="target", required=True, help="checkpoint at alpha 1 (e.g. the fine-tuned run)")
    p.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", help="comma-separated, in [0, 1]")
    p.add_argument(
        "--config", action="append", default=[], help="YAML whose eval section scores each alpha (repeat for more sets)"
    )
    p.add_argument("--out", required=True, help="folder for alpha-*/ checkpoints, interpolation.json/.md/.png")


def interpolate_cli(args: argparse.Namespace) -> int:
    from align.eval.interpolate import parse_alphas, run_interpolation

    record = run_interpolation(args.source, args.target, parse_alphas(args.alphas), args.config, args.out)
    print(record["table"])
    print(f"plot: {record['plot']}")
    return 0


def merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a LoRA run's checkpoint, its checkpoints/ root or the run folder")
    p.add_argument("--out", required=True, help="folder for the merged checkpoint (out/step-N, out/latest)")


def merge_cli(args: argparse.Namespace) -> int:
    from align.model.lora_merge import merge_checkpoint

    print(f"merged: {merge_checkpoint(args.checkpoint, args.out)}")
    return 0
