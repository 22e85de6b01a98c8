"""WiSE-FT on real data (issue 24): how much a fine-tuned model forgets, and what weight-space
interpolation gives back.

A tiny image<->text model (open_clip towers from config, 28 px ViT) is pretrained on MNIST 5k's train
split (../shared/data/image/mnist5k: 4,000 real handwritten digits, captions from three templates),
then fine-tuned from it (``model.init_from``) on scikit-learn's digits (1,437 train images, another
scanner and resolution) three ways: full fine-tuning, LiT (the image tower and head locked, text
trains) and LoRA r 8 on both towers' attention and MLP layers (peft). For each, ``align
interpolate`` (``align.eval.interpolate.run_interpolation``; LoRA merged first) writes
``(1 - alpha) * pretrained + alpha * fine-tuned`` for each alpha and scores zero-shot classification
on both test splits (MNIST's 1,000 and digits' 360). Fixed splits, one seed, no tuning on test.
Accuracy does not depend on the machine's load; the seconds do.

    python benchmarks/wise_ft.py                         # 300 + 3 x 150 steps, 7 alphas: ~2 min on 2 cores
    python benchmarks/wise_ft.py --pretrain-steps 600 --finetune-steps 300
    python benchmarks/wise_ft.py --smoke                 # 20 + 10 steps, 3 alphas (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
MNIST = ROOT.parent / "shared" / "data" / "image" / "mnist5k" / "mnist_5k.csv.gz"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the number {}.", "a handwritten {}.", "the digit {}."]
MODEL = {
    "embed_dim": 64,
    "modalities": {
        "image": {
            "options": {
                "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 64, "layers": 2, "head_width": 32},
                "output_dim": 64,
                "mean": [0.5] * 3,
                "std": [0.5] * 3,
            }
        },
        "text": {
            "options": {
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
                "output_dim": 64,
            }
        },
    },
}
SETS = {
    "mnist": {
        "source": "pixel-csv",
        "data_files": str(MNIST),
        "label_column": "label",
        "label_names": NAMES,
        "caption_templates": TEMPLATES,
        "columns": {"image": "image", "text": "label_captions"},
    },
    "digits": {"source": "sklearn-digits", "columns": {"image": "image", "text": "caption"}, "label_column": "label"},
}


LORA = {"target_modules": r".*(attn|mlp\.c_fc|mlp\.c_proj)$", "r": 8, "alpha": 16}
# how each method fine-tunes from the pretrained towers: model.modalities.<m> additions
METHODS = {
    "full": {},
    "LiT (image locked)": {"image": {"lock": {"all": True, "head": True}}},
    "LoRA r8 (both towers)": {"image": {"lora": LORA}, "text": {"lora": LORA}},
}


def run(out: Path, name: str, data: dict, steps: int, init: Path | None = None, towers: dict | None = None) -> Path:
    import align
    from align.config.schema import config_from_dict
    from align.model.checkpoint import resolve_checkpoint

    model = json.loads(json.dumps(MODEL))
    if init is not None:
        model["init_from"] = str(init)
    for mod, extra in (towers or {}).items():
        model["modalities"][mod].update(extra)
    train = {"batch_size": 64, "steps": steps, "lr": 1e-3, "warmup_steps": min(30, steps // 4)}
    cfg = config_from_dict(
        {
            "output_dir": str(out / name),
            "seed": 0,
            "model": model,
            "data": {"train": {**data, "split": "train"}, "num_workers": 0},
            "train": {**train, "eval_at_end": False, "progress": False, "log_every": max(1, steps)},
        }
    )
    return resolve_checkpoint(align.train(cfg).output_dir)


def main() -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--alphas", default="0,0.2,0.4,0.5,0.6,0.8,1")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.pretrain_steps, args.finetune_steps, args.alphas = 20, 10, "0,0.5,1"
    from align.eval.interpolate import parse_alphas, run_interpolation

    print(f"# wise_ft: {os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wise-ft-") as tmp_name:
        tmp = Path(tmp_name)
        pre = run(tmp, "pretrain-mnist", SETS["mnist"], args.pretrain_steps)
        zs = {"query": "image", "prompt_modality": "text", "classnames": NAMES, "templates": TEMPLATES}
        configs = []
        for name, data in SETS.items():
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"eval": {"data": {**data, "split": "test"}, "zeroshot": zs}}))
            configs.append(path)
        records = {}
        for i, (method, towers) in enumerate(METHODS.items()):
            fine = run(tmp, f"finetune-{i}", SETS["digits"], args.finetune_steps, init=pre, towers=towers)
            records[method] = run_interpolation(pre, fine, parse_alphas(args.alphas), configs, tmp / f"wise-{i}")
    steps = f"pretrained {args.pretrain_steps} steps on MNIST 5k train, fine-tuned {args.finetune_steps}"
    print(f"\n{steps} on digits train; WiSE-FT of each fine-tuned model (LoRA merged first)")
    print("| method | alpha | MNIST test zero-shot top-1 | digits test zero-shot top-1 |")
    print("|---|---|---|---|")
    for method, record in records.items():
        rows = [record["sets"][str(c)] for c in configs]
        for i, alpha in enumerate(record["alphas"]):
            mnist, digits = rows[0][i]["zeroshot/top1"], rows[1][i]["zeroshot/top1"]
            print(f"| {method} | {alpha:.2f} | {mnist:.4f} | {digits:.4f} |")
    print(f"total {time.perf_counter() - t0:.0f} s; load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
