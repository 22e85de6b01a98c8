"""The ``eval zeroshot | retrieval | pairs | baseline``, ``index build`` and ``query`` subcommands:
argument parsing and printing only, on top of ``align.eval.commands``, ``align.eval.baselines`` and
``align.index.build`` (the CLI layer; see docs/ARCHITECTURE.md). Their rows are in
``align.app.command_table``; everything heavy is imported inside the handlers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, its checkpoints/ root, or a run folder")
    p.add_argument(
        "--config",
        action="append",
        help="YAML whose eval section to use (default: the checkpoint's); "
        "pairs takes it more than once: one table per file, merged into one report",
    )
    p.add_argument("--templates", help="prompt templates file (.json list / CuPL dict, or one per line)")
    p.add_argument(
        "--adapter", help="zeroshot: a few-shot head from `align adapt` (file, or its name in <checkpoint>/adapted)"
    )
    p.add_argument("--out", help="report folder (default: <checkpoint>/eval)")
    p.add_argument("overrides", nargs="*", help="eval.* dotted overrides, e.g. eval.data.split=test")


def eval_cli(args: argparse.Namespace) -> int:
    from align.eval.commands import run_eval

    task = args.command_name.split(" ")[1]  # "eval zeroshot" -> "zeroshot"
    if task == "pairs":
        return _pairs_cli(args)
    if args.config and len(args.config) > 1:
        raise SystemExit(f"align eval {task}: --config once (only `align eval pairs` merges several tables)")
    config = args.config[0] if args.config else None
    if args.adapter and task != "zeroshot":
        raise SystemExit(f"align eval {task}: --adapter is for `align eval zeroshot`")
    report = run_eval(
        task,
        args.checkpoint,
        config=config,
        overrides=args.overrides,
        templates=args.templates,
        out=args.out,
        adapter=args.adapter,
    )
    m = report["metrics"]
    if task == "probe":
        print(
            f"linear probe ({m['query']}, C={m['probe']['C']}, {m['n_train']} rows): top-1 {m['top1']:.4f}  "
            f"mean per-class recall {m['mean_per_class_recall']:.4f}  (n={m['n']})"
        )
    elif task == "zeroshot":
        top5 = "n/a" if m["top5"] is None else f"{m['top5']:.4f}"
        print(
            f"zero-shot: top-1 {m['top1']:.4f}  top-5 {top5}  mean per-class recall "
            f"{m['mean_per_class_recall']:.4f}  (n={m['n']})"
        )
    else:
        for key, value in m.items():
            if "/R@" in key or key.endswith(("/mAP", "/MRR", "/median_rank")):
                print(f"{key:<28} {value:.4f}" if isinstance(value, float) else f"{key:<28} {value}")
    print(f"report: {report['path']}")
    return 0


def _pairs_cli(args: argparse.Namespace) -> int:
    from align.eval.pairs import PairsError, run_pairs  # lazy: `align --help` stays instant

    if args.templates:
        raise PairsError("--templates: zero-shot prompts; `align eval pairs` scores retrieval only")
    report = run_pairs(args.checkpoint, config=args.config, overrides=args.overrides, out=args.out)
    pairs = report["metrics"]
    for s in [t["settings"] for t in pairs["tables"]] if "tables" in pairs else [pairs["settings"]]:
        print(
            f"retrieval settings from {s['from']}: ks {s['ks']}, positives {s['positives']}, "
            f"dedupe {s['dedupe']}, index {s['index']}"
        )
    print(report["markdown"], end="")
    print(f"report: {report['path']} (+ pairs.md, pairs_r1.png)")
    return 0


def baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config: fitted on data.train, scored on eval.data")
    p.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (default 1.0)")


def baseline_cli(args: argparse.Namespace) -> int:
    from align.config.schema import load_config
    from align.data.summary import describe_source
    from align.data.tables import describe_spec
    from align.errors import ConfigError
    from align.eval.baselines import input_logreg, node_feature_logreg

    cfg = load_config(args.config, args.overrides)
    if cfg.eval is None:
        raise ConfigError(f"{args.config}: no eval section (eval.data is the test table)")
    zs = cfg.eval.zeroshot
    modality = zs.query if zs is not None else next(iter(cfg.data.train.columns))
    start = time.perf_counter()
    try:
        if cfg.data.train.source == "graph-nodes":
            r = node_feature_logreg(cfg.data.train, cfg.eval.data, C=args.C, seed=cfg.seed)
            r["features"] = "raw node features"
        else:
            r = input_logreg(cfg, modality, C=args.C, seed=cfg.seed)
    except ValueError as err:  # names the column / config key: one line, exit 2
        raise ConfigError(str(err)) from err
    train, test = (describe_source(describe_spec(s)) for s in (cfg.data.train, cfg.eval.data))
    print(
        f"logistic regression on {r['features']} (C={args.C}): trained on {r['n_train']} rows of "
        f"{train}, accuracy {r['accuracy']:.4f} on {r['n_test']} rows of {test} "
        f"({r['n_classes']} classes, chance {1 / r['n_classes']:.3f}); "
        f"fit+predict {r['seconds']:.2f} s, total {time.perf_counter() - start:.1f} s"
    )
    return 0


def build_cli(args: argparse.Namespace) -> int:
    import tempfile

    from align.index.build import IndexBuildError, build_index, parse_data_spec
    from align.index.choose import BudgetError, parse_size
    from align.index.distributed import encoded_shares, process_world, remove_shares, shard_folder
    from align.index.files import check_save_target

    def check_out() -> None:
        try:
            check_save_target(Path(args.out), args.overwrite, hint="pass --overwrite to replace it")
        except FileExistsError as e:
            raise IndexBuildError(f"--out: {e}") from None

    check_out()  # before the model loads or anything is encoded: a refused --out should cost nothing
    spec = parse_data_spec(args.data)
    budget = args.max_memory is not None or args.max_query_ms is not None
    factory = args.factory or args.spec or (None if budget else "Flat")  # --factory overrides the choice
    try:
        max_memory = None if args.max_memory is None else parse_size(args.max_memory)
    except ValueError as e:
        raise IndexBuildError(f"--max-memory: {e}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunks = None
    if process_world()[1] > 1:  # accelerate launch: each process encodes its share, the main one builds
        chunks = encoded_shares(args.checkpoint, spec, args.modality, out, args.dim, args.batch_size, args.chunk_rows)
        if chunks is None:
            return 0
    # the build spills beside --out (the same filesystem: its lists file is linked into the folder, not copied)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.build-") as scratch:
        try:
            index = build_index(
                args.checkpoint,
                spec,
                args.modality,
                factory,
                args.batch_size,
                dim=args.dim,
                max_memory=max_memory,
                max_query_ms=args.max_query_ms,
                storage="ondisk" if args.on_disk else None,
                scratch=scratch,
                chunk_rows=args.chunk_rows,
                chunks=chunks,
            )
        except BudgetError as e:
            raise IndexBuildError(str(e)) from None
        finally:
            if chunks is not None:
                remove_shares(shard_folder(out))
        try:
            folder = index.save(args.out, model=index.model, modality=args.modality, overwrite=args.overwrite)
        except FileExistsError:
            check_out()  # --out was written while we encoded: the same refusal, in the CLI's words
            raise
    skipped = f"; skipped {index.skipped} rows that failed to load" if index.skipped else ""
    print(f"indexed {len(index)} {args.modality} items ({index.spec}) into {folder}{skipped}")
    if index.build_report:
        from align.index.info import format_info, index_info

        lines = format_info(index_info(folder)).splitlines()
        shown = ("chosen", "storage", "estimated", "recall@10", "measured")
        print("\n".join(line for line in lines if line.split()[0] in shown))
    return 0


QUERY_HELP = {"text": "a string", "graph": "a SMILES string or a .graphml / .gml / .gexf file"}


def query_flags() -> list[str]:
    """One ``--<modality>`` flag per modality the registry knows (installed packages' included),
    read from entry points without importing any adapter."""
    from align.registry import ADAPTERS

    return ADAPTERS.names()


def query_cli(args: argparse.Namespace) -> int:
    """One query: against a running service (``--server``: nothing is loaded here), or through the
    in-process ``Searcher`` the service is built on (the checkpoint and index loaded for this one query)."""
    from align.app.terminal import printable
    from align.errors import ConfigError  # not align.index's error: a --server query imports no torch

    flags = query_flags()
    given = [(m, getattr(args, m, None)) for m in flags if getattr(args, m, None) is not None]
    if args.modality is not None or args.query is not None:
        if args.modality is None or args.query is None:
            raise ConfigError("--modality and --query go together, e.g. --modality text --query 'a seven'")
        given.append((args.modality, args.query))
    if len(given) != 1:
        raise ConfigError(
            "give exactly one query: --modality M --query Q, or one of " + ", ".join(f"--{m}" for m in flags)
        )
    modality, raw = given[0]
    if args.server:
        from align.serve.client import remote_search

        if args.checkpoint:
            raise ConfigError("--checkpoint is the server's (align serve --checkpoint), not a query's")
        hits = remote_search(args.server, modality, raw, args.k, index=args.index, token=args.token)
        rows = [(h["score"], h["id"], h["metadata"]) for h in hits]
    else:
        if not args.index:
            raise ConfigError("give --index FOLDER (or --server URL of a running align serve)")
        from align.serve.searcher import Searcher

        searcher = Searcher(args.checkpoint, {"query": args.index})
        rows = [(h.score, h.id, h.metadata) for h in searcher.search(modality, [raw], args.k)[0]]
    for rank, (score, id_, meta) in enumerate(rows, 1):
        # captions, labels and paths are data: their control characters are shown, not obeyed
        extras = "  ".join(f"{printable(k)}={printable(v)}" for k, v in meta.items() if k != "row")
        print(f"{rank:>3}. score {score:.4f}  id {printable(id_)}  {extras}")
    return 0


def build_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--checkpoint", required=True)
    b.add_argument(
        "--data",
        required=True,
        help="dataset spec: YAML file or inline YAML "
        "(e.g. '{source: sklearn-digits, split: test, columns: {image: image}, label_column: label}')",
    )
    b.add_argument("--modality", required=True)
    b.add_argument(
        "--dim",
        type=int,
        help="index only the first DIM embedding dims (Matryoshka-trained models; queries are truncated to match)",
    )
    b.add_argument(
        "--on-disk",
        action="store_true",
        help="keep an IVF index's inverted lists on disk (lists.ivfdata, memory-mapped): RAM holds the coarse "
        "quantizer only",
    )
    b.add_argument(
        "--chunk-rows",
        type=int,
        default=16_384,
        help="rows encoded and spilled to disk at a time (what a build holds besides the index); under "
        "accelerate launch, chunks go round the processes",
    )
    b.add_argument("--out", required=True, help="index folder (refused if it exists, unless --overwrite)")
    b.add_argument("--spec", help="faiss index_factory string: Flat (default), HNSW32, IVF256,Flat, ...")
    b.add_argument("--factory", help="the same as --spec; overrides the choice --max-memory would make")
    b.add_argument(
        "--max-memory", help="choose the index for this memory budget (e.g. 512MiB, 2GB) and score it (recall@10)"
    )
    b.add_argument("--max-query-ms", type=float, help="... and for this one-query time budget")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the index folder at --out (checked before "
        "anything is encoded; a folder that is not an index is never replaced)",
    )


def query_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--index", help="index folder; with --server, the name of one of the server's indexes")
    q.add_argument("--checkpoint", help="default: the checkpoint that built the index")
    q.add_argument("--server", help="URL of a running `align serve` (e.g. http://127.0.0.1:8000): ask it, load nothing")
    q.add_argument("--token", help="the server's bearer token (default: $ALIGN_SERVE_TOKEN)")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--modality", help="the query's modality (any the checkpoint has), with --query")
    q.add_argument("--query", help="the raw query: a string, a file path, a SMILES ...")
    for m in query_flags():
        q.add_argument(f"--{m}", help=f"{m} query ({QUERY_HELP.get(m, 'a file path')})")


def info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an index folder (align index build --out)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def info_cli(args: argparse.Namespace) -> int:
    import json

    from align.app.terminal import printable
    from align.index.info import format_info, index_info

    info = index_info(args.folder)
    # field names and the model path come from files: shown inert, line by line
    print(json.dumps(info, indent=1) if args.json else "\n".join(map(printable, format_info(info).splitlines())))
    return 0
