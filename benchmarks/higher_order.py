"""Higher-order alignment (issue 15): can the text be predicted from audio *and* image together?

Data: ``fsdd-mnist-sum`` (align/data/sources/fsdd_mnist_sum.py), an FSDD recording of digit a, an MNIST
image of an independent digit b, and a text naming (a + b) mod 10. Every pair of the three is
independent, so a pairwise objective cannot learn how the text depends on the other two; only a
term over all three at once can. The same towers and data (configs/fsdd-mnist-sum-symile.yaml)
are trained with equal steps as

* ``clip``   -- pairwise CLIP over the three pairs (audio-text, image-text, audio-image);
* ``symile`` -- the config as it is: Symile over (audio, image, text), no pairwise term;
* ``gram``   -- GRAM over (text, audio, image) (text the anchor), no pairwise term.

Each run is reloaded from its checkpoint (``align.model.checkpoint.load_model``) and scores, for every
held-out (audio, image) pair (FSDD takes 0-4 with unseen MNIST test images, 3 images per
recording: 900 triples), the 10 sum classes' text embeddings t_c (mean of the normalised
embeddings of every caption template, renormalised, as zero-shot prompt ensembles are):

* ``mip``    -- Symile's score, MIP(a, i, t_c) = sum_d a_d i_d t_c,d;
* ``cosine`` -- the best a pairwise model offers: cos(a, t_c) + cos(i, t_c);
* ``volume`` -- GRAM's score, minus the volume spanned by (a, i, t_c).

Top-1 accuracy of the argmax class; chance is 0.10. Every model is also scored with every rule
(the model's own rule is marked), and on 900 training triples, to tell fitting from generalising.

    python benchmarks/higher_order.py                       # clip, symile, gram; ~15-20 min on 2 cores
    python benchmarks/higher_order.py --runs clip,symile --steps 300
    python benchmarks/higher_order.py --runs clip,symile --digits   # + towers that know the digits (data.mix)
    python benchmarks/higher_order.py --smoke     # all three, tiny towers, 2 steps, 32-row tables: seconds (CI)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from align.app.trainer import train
from align.config.dataset import DatasetSpec
from align.config.schema import config_from_dict
from align.data.sources.common import DIGIT_NAMES
from align.data.sources.fsdd_mnist_sum import SUM_CAPTIONS
from align.data.tables import load_table
from align.eval.runner import encode_table
from align.eval.zeroshot import build_classifier
from align.model.checkpoint import load_model
from align.objectives.multiway import volume_matrix

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fsdd-mnist-sum-symile.yaml"
TRIPLE = ["audio", "image", "text"]
RUNS = {  # run -> its train section's objective (everything else is the config's)
    "clip": {"pairs": [["audio", "text"], ["image", "text"], ["audio", "image"]], "multiway": None},
    "symile": {},
    "gram": {"pairs": [], "multiway": {"loss": "gram", "modalities": ["text", "audio", "image"]}},
}
OWN_SCORE = {"clip": "cosine", "symile": "mip", "gram": "volume"}
SMOKE_ROWS = 32  # --smoke: rows of each scored table
SMOKE_MODALITIES = {  # --smoke: the config's towers at their smallest (same adapters, same front ends)
    "audio": {
        "sample_rate": 8000,
        "clip_seconds": 0.5,
        "n_mels": 32,
        "patch_size": 16,
        "patch_stride": 16,
        "width": 32,
        "layers": 1,
        "heads": 2,
    },
    "image": {
        "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 32, "layers": 1, "head_width": 16},
        "output_dim": 32,
    },
    "text": {
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        "output_dim": 32,
    },
}
# --aux: instance discrimination against a second, smaller tower of the same modality reading the
# same column (its own augmentation draw), added to every run alike. It carries nothing about the
# sum; it only keeps each tower's embeddings input-dependent (see benchmarks/README.md)
AUX = {
    "audio2": ("audio", "path", {"width": 64, "layers": 2, "heads": 2}),
    "image2": ("image", "image", {"vision_cfg": {"width": 32, "layers": 1, "head_width": 16}, "output_dim": 32}),
}


# --digits: the towers also learn what digit they hear / see, from two more training sets in the same
# run (data.mix): FSDD's training recordings <-> "the spoken word seven", MNIST's training images <->
# "the digit seven", through a second text tower ("words"; the sum's text tower stays "text").
# Every run gets them alike; they say nothing about the sum, only what each digit is -- the
# pretrained-encoder setting of the Symile paper, learnt in the same run (see benchmarks/README.md)
DIGIT_SETS = [
    {
        "source": "files",
        "data_files": "../shared/data/audio/fsdd/recordings/*.wav",
        "load_kwargs": {"pattern": r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"},
        "where": {"take": {"ge": 5}},
        "columns": {"audio": "path", "words": "label_captions"},
        "label_column": "label",
        "label_names": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        "caption_templates": ["the spoken word {}.", "someone saying {}."],
    },
    {
        "source": "pixel-csv",
        "data_files": "../shared/data/image/mnist5k/mnist_5k.csv.gz",
        "split": "train",
        "columns": {"image": "image", "words": "label_captions"},
        "label_column": "label",
        "label_names": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        "caption_templates": ["the digit {}.", "a handwritten {}."],
    },
]


def sum_scores(audio: torch.Tensor, image: torch.Tensor, classes: torch.Tensor, rule: str) -> torch.Tensor:
    """[N, C] scores of class text embeddings ``classes`` [C, d] for the (audio, image) pairs
    ([N, d] each, unit norm); higher is better. ``rule``: mip | cosine | volume (see the module)."""
    if rule == "mip":
        return (audio * image) @ classes.T
    if rule == "cosine":
        return audio @ classes.T + image @ classes.T
    if rule == "volume":
        return -volume_matrix(classes.double(), [audio.double(), image.double()]).T.float()
    raise ValueError(f"unknown scoring rule {rule!r} (mip, cosine, volume)")


def top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(-1) == labels).float().mean())


def triple_tables(base: dict, train_rows: int = 900, seed: int = 0, held_out_rows: int | None = None) -> dict:
    """{"held-out": every test triple (or ``held_out_rows`` seeded random ones), "train": ``train_rows``
    seeded random training triples}, as (DatasetSpec, table): the config's source and options (the
    training ones exactly as trained), with only audio and image encoded (the text side is the 10
    class prompts)."""
    import numpy as np

    out = {}
    for name, split in (("held-out", "test"), ("train", "train")):
        kwargs = dict(base["data"]["train"]["load_kwargs"])
        if split == "test":
            kwargs.pop("pairs_per_recording", None)  # the source's test default: 3 images per recording
        spec = DatasetSpec(
            source="fsdd-mnist-sum",
            split=split,
            load_kwargs=kwargs,
            label_column="label",
            columns={"audio": "path", "image": "image"},
        )
        table = load_table(spec, f"{name} triples")
        keep = train_rows if split == "train" else held_out_rows
        if keep is not None:
            rows = np.random.default_rng(seed).choice(len(table), size=min(keep, len(table)), replace=False)
            table = table.select(np.sort(rows))
        out[name] = (spec, table)
    return out


@torch.no_grad()
def score_run(run_dir: Path, tables: dict) -> dict[str, dict[str, float]]:
    """{split: {rule: top-1}} of a trained run, reloaded from its checkpoint."""
    model, _ = load_model(run_dir)
    classes = build_classifier(model, DIGIT_NAMES, SUM_CAPTIONS, modality="text")
    out = {}
    for split, (spec, table) in tables.items():
        embs, labels, _ = encode_table(model, table, spec.columns, "label", batch_size=256)
        labels = torch.as_tensor(labels)
        out[split] = {
            rule: top1(sum_scores(embs["audio"], embs["image"], classes, rule), labels) for rule in OWN_SCORE.values()
        }
    return out


def run_config(base: dict, name: str, steps: int, run_dir: Path, aux: bool = False, digits: bool = False) -> dict:
    """The config dict of one run: the config's towers and data, ``RUNS[name]``'s objective."""
    data = copy.deepcopy(base)
    data["output_dir"] = str(run_dir)
    data["train"].update(copy.deepcopy(RUNS[name]), steps=steps, progress=False)
    data.pop("eval", None)
    if digits:  # a mixture: the triples plus the two digit sets, one row in three from each
        data["model"]["modalities"]["words"] = {"adapter": "text", **copy.deepcopy(data["model"]["modalities"]["text"])}
        data["data"]["mix"] = [{"data": data["data"].pop("train")}] + [{"data": copy.deepcopy(d)} for d in DIGIT_SETS]
        data["train"]["pairs"] = list(data["train"].get("pairs") or []) + [["audio", "words"], ["image", "words"]]
        data["train"]["batch_size"] = 96
    if aux:
        mods = data["model"]["modalities"]
        for new, (mod, column, options) in AUX.items():
            opts = copy.deepcopy(mods[mod]["options"])
            for key, value in options.items():
                opts[key] = {**opts[key], **value} if isinstance(value, dict) else value
            mods[new] = {"adapter": mod, "options": opts}
            data["data"]["train"]["columns"][new] = column
        data["train"]["pairs"] = list(data["train"].get("pairs") or []) + [[m, new] for new, (m, _, _) in AUX.items()]
    return data


def train_run(data: dict) -> float:
    """Train one run (a config dict); returns wall seconds."""
    name, steps = Path(data["output_dir"]).name, data["train"]["steps"]
    start = time.perf_counter()
    result = train(config_from_dict(data))
    losses = [v for _, v in result.losses]
    print(
        f"{name}: {steps} steps in {time.perf_counter() - start:.0f} s, loss first {losses[0]:.3f} "
        f"last {losses[-1]:.3f}",
        flush=True,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="clip,symile,gram", help="comma-separated subset of " + ",".join(RUNS))
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    p.add_argument("--out", default="runs/higher-order", help="folder of the runs (relative to the checkout)")
    p.add_argument("--score-only", action="store_true", help="rescore runs already trained in --out")
    p.add_argument(
        "--aux",
        action="store_true",
        help="add instance-discrimination pairs (audio-audio2, "
        "image-image2: second, smaller towers on the same columns) to every run",
    )
    p.add_argument(
        "--digits",
        action="store_true",
        help="train every run on a mixture (data.mix): the triples "
        "plus FSDD audio <-> spoken-digit words and MNIST image <-> digit words (batch 96, a third each)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run of the same path (CI): the config's towers at "
        "their smallest, 2 steps of batch 16 on 300 recordings, 32-row scored tables, "
        "--out a temporary folder",
    )
    args = p.parse_args(argv)
    os.chdir(REPO)  # the config's data paths are relative to the checkout root
    base = yaml.safe_load(CONFIG.read_text())
    tmp = None
    if args.smoke:
        for mod, options in SMOKE_MODALITIES.items():
            base["model"]["modalities"][mod]["options"].update(copy.deepcopy(options))
        base["model"]["embed_dim"] = 32
        base["data"]["num_workers"] = 0
        base["data"]["train"]["where"] = {"take": {"ge": 45}}  # 300 recordings: every digit and speaker
        base["data"]["train"]["load_kwargs"]["pairs_per_recording"] = 1
        base["train"].update(batch_size=16, warmup_steps=0, log_every=1)
        args.steps = args.steps or 2
        if not any(a == "--out" or a.startswith("--out=") for a in (argv if argv is not None else sys.argv[1:])):
            tmp = tempfile.TemporaryDirectory(prefix="higher-order-smoke-")
            args.out = tmp.name
    steps = args.steps or base["train"]["steps"]
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    out = Path(args.out)
    tables = triple_tables(base, SMOKE_ROWS, held_out_rows=SMOKE_ROWS) if args.smoke else triple_tables(base)
    load_before = os.getloadavg()
    rows, walls = {}, {}
    for name in names:
        run_dir = out / (name + ("+aux" if args.aux else "") + ("+digits" if args.digits else ""))
        if not args.score_only:
            walls[name] = train_run(run_config(base, name, steps, run_dir, args.aux, args.digits))
        rows[name] = score_run(run_dir, tables)
        print(f"{name}: {rows[name]}", flush=True)
    load_after = os.getloadavg()

    print("\n### Text from audio + image: top-1 of the sum (a + b) mod 10, chance 0.10\n")
    aux = " + instance-discrimination pairs (audio-audio2, image-image2) in every run" if args.aux else ""
    aux += (
        (" + digit sets (data.mix: FSDD audio <-> words, MNIST image <-> words; a third of each batch is triples)")
        if args.digits
        else ""
    )
    batch = 96 if args.digits else base["train"]["batch_size"]
    print(
        f"{steps} steps per run{aux}, batch {batch}; held-out: "
        f"{len(tables['held-out'][1])} test triples (FSDD takes 0-4, MNIST test images); train: "
        f"{len(tables['train'][1])} of the training triples.\n"
    )
    print("| objective | scored by | held-out top-1 | train top-1 | train time |")
    print("|---|---|---:|---:|---:|")
    for name in names:
        for rule in OWN_SCORE.values():
            own = rule == OWN_SCORE[name]
            mark = "**" if own else ""
            wall = f"{walls[name] / 60:.1f} min" if own and name in walls else ""
            print(
                f"| {name} | {rule}{' (own)' if own else ''} | {mark}{rows[name]['held-out'][rule]:.3f}{mark} | "
                f"{rows[name]['train'][rule]:.3f} | {wall} |"
            )
    print("| chance | | 0.100 | 0.100 | |")
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after."
    )
    command = ["python", "benchmarks/higher_order.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Rerun: `{shlex.join(command)}`")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
