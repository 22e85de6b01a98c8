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


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint, its checkpoints/ root or a run folder")
    p.add_argument("--format", choices=["align", "open_clip", "onnx", "hf"], default="align")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--name", default="align-export", help="open_clip: the model config's name")
    p.add_argument(
        "--data", help="onnx: a dataset spec (YAML file or inline) whose first rows check each tower's graph"
    )
    p.add_argument("--rows", type=int, default=8, help="onnx: rows of --data checked against torch")


def export_cli(args: argparse.Namespace) -> int:
    from align.model.checkpoint import load_model, resolve_checkpoint
    from align.model.export import export_align, export_onnx, export_open_clip

    ckpt = resolve_checkpoint(args.checkpoint)
    if args.format == "align":
        print(f"exported: {export_align(ckpt, args.out)} (align.load_model loads it; README.md is its card)")
        return 0
    model, _ = _plain_model(ckpt, load_model)
    if args.format == "hf":
        from align.model.export import export_hf

        for mod, folder in export_hf(model, args.out).items():
            print(f"{mod}: {folder} (transformers' from_pretrained loads it; head.safetensors is align's head)")
        return 0
    if args.format == "open_clip":
        paths = export_open_clip(model, args.out, args.name)
        print(
            f"open_clip: open_clip.add_model_config({paths['config']!r}); "
            f"open_clip.create_model_and_transforms({args.name!r}, pretrained={paths['weights']!r})"
        )
        return 0
    from pathlib import Path

    from align.errors import ConfigError

    if not args.data:
        raise ConfigError("align export --format onnx: give --data SPEC (real rows to check each graph against torch)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = _data_spec(args.data)
    for mod in [m for m in model.modalities if m in spec.columns]:
        result = export_onnx(model, mod, _first_rows(model, spec, mod, args.rows), out / f"{mod}.onnx")
        check = f"onnxruntime vs torch on {result['rows']} rows: min cosine {result['min_cosine']:.6f}"
        print(f"{mod}: {result['path']} ({check})")
    return 0


def _data_spec(text: str):
    from align.index.build import parse_data_spec

    return parse_data_spec(text)


def _first_rows(model, spec, modality: str, rows: int):
    """The first ``rows`` rows of ``spec``'s ``modality`` column, preprocessed and collated."""
    from align.data.tables import load_table

    table = load_table(spec, "--data")
    pre = model.adapters[modality].preprocessor()
    column = spec.columns[modality]
    return pre.collate([pre(table[i][column], train=False) for i in range(min(rows, len(table)))])


def _plain_model(ckpt, load_model):
    """The checkpoint's model, LoRA adapters merged in (export formats know no LoRA)."""
    model, cfg = load_model(ckpt)
    from align.model.lora import lora_modalities

    if lora_modalities(cfg.model):
        from align.model.lora_merge import merged_model

        model, cfg = merged_model(model, cfg)
    return model, cfg
