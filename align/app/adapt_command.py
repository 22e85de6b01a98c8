"""``align adapt``: parse and print; the work is ``align.adapt.run`` (imported in the call)."""

from __future__ import annotations

import argparse


def adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run's YAML config (its output_dir's checkpoint), a run folder or a checkpoint")
    p.add_argument("--shots", default="1,2,4,8,16", help="examples per class, comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="seeded draws per shot count (the same for every method)")
    p.add_argument(
        "--methods",
        help="comma-separated (default all): linear-probe, zs-probe, tip-adapter, tip-adapter-f, coop, coop-csc, "
        "cocoop",
    )
    p.add_argument(
        "--base-classes",
        help="base-to-novel: fit on these classes (names or ids, comma-separated), report base, novel and HM",
    )
    p.add_argument("--config", help="YAML whose eval section (classes, prompts, test split) to use")
    p.add_argument("--out", help="report folder (default: <checkpoint>/adapt)")
    p.add_argument("--no-save", action="store_true", help="do not write the heads to <checkpoint>/adapted/")


def adapt_cli(args: argparse.Namespace) -> int:
    from align.adapt.run import run_adapt
    from align.adapt.shots import ShotError, parse_ints

    if args.seeds < 1:
        raise ShotError(f"--seeds must be at least 1, got {args.seeds}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    report = run_adapt(
        args.run,
        shots=parse_ints(args.shots, "--shots"),
        seeds=args.seeds,
        methods=methods,
        base_classes=args.base_classes,
        config=args.config,
        out=args.out,
        save=not args.no_save,
    )
    print(open(report["path"].replace(".json", ".md"), encoding="utf-8").read())
    for method, path in report["saved"].items():
        print(f"saved {method}: {path}")
    print(f"report: {report['path']}")
    return 0
