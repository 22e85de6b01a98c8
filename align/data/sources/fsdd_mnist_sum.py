"""``fsdd-mnist-sum``: a spoken digit, a handwritten digit, and a text naming their sum mod 10.

The higher-order experiment of issue 15. Each FSDD recording (spoken digit ``a``) is paired with
an MNIST image (written digit ``b``) whose digit is drawn independently of ``a``, and the text
names ``(a + b) % 10``. Every pair of the three is then statistically independent (any two of
``a``, ``b``, ``(a + b) % 10`` are independent and uniform), so pairwise contrastive training
has nothing to learn; only an objective over all three at once (Symile, GRAM) can tie the text
to the audio *and* the image together.

Independence is made exact, not just expected: within each spoken digit, the rows' written
digits are a seeded permutation of a balanced list, so every (a, b) cell holds the same count
whenever a class's rows divide by 10 (they do for FSDD: 270 train / 30 test recordings per digit).

    DatasetSpec(source="fsdd-mnist-sum", split="train", columns={...},
                load_kwargs={"fsdd_dir": ".../fsdd/recordings", "mnist_csv": ".../mnist_5k.csv.gz"})
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from align.data.sources import SOURCES
from align.data.sources.common import (
    DIGIT_NAMES,
    builtin_options,
    check_digit_labels,
    read_pixel_csv,
    rotated_captions,
    stratified_split,
)
from align.errors import DataError

FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
TEST_TAKES = 5  # FSDD's official split: takes 0-4 test, 5-49 train
# every template takes the sum's name; training draws one per visit, evaluation uses the first
SUM_CAPTIONS = [
    "the sum is {}.",
    "the two digits add up to {}.",
    "spoken plus written makes {}.",
    "the total of the digits is {}.",
    "{} is the sum.",
]


def fsdd_rows(fsdd_dir: str | Path, split: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """``(paths, digits, speakers, takes)`` of the recordings on one side of the official split,
    sorted by path, so the pairing below depends on the seed only."""
    folder = Path(fsdd_dir)
    if not folder.is_dir():
        raise DataError(f"fsdd-mnist-sum: load_kwargs.fsdd_dir {str(folder)!r} is not a folder")
    found = sorted((p, FSDD_NAME.match(p.name)) for p in folder.glob("*.wav"))
    found = [(p, m) for p, m in found if m is not None]
    if not found:
        raise DataError(
            f"fsdd-mnist-sum: load_kwargs.fsdd_dir {str(folder)!r} has no <digit>_<speaker>_<take>.wav recordings"
        )
    keep = {"train": lambda t: t >= TEST_TAKES, "test": lambda t: t < TEST_TAKES, "all": lambda t: True}
    if split not in keep:
        raise DataError(f"fsdd-mnist-sum: split must be train, test or all, not {split!r}")
    found = [(p, m) for p, m in found if keep[split](int(m.group(3)))]
    return (
        [str(p) for p, _ in found],
        np.array([int(m.group(1)) for _, m in found], dtype=np.int64),
        [m.group(2) for _, m in found],
        np.array([int(m.group(3)) for _, m in found], dtype=np.int64),
    )


def balanced_partners(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A partner digit per row, independent of ``digits``: within each digit class the partners
    are a shuffled ``0..9, 0..9, ...`` (exactly balanced when the class size divides by 10)."""
    partners = np.empty_like(digits)
    for d in np.unique(digits):
        rows = np.nonzero(digits == d)[0]
        partners[rows] = rng.permutation(np.arange(len(rows)) % 10)
    return partners


def pick_images(mnist_labels: np.ndarray, wanted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each wanted digit, a row of ``mnist_labels`` of that digit, cycling through a seeded
    shuffle of each class (so images repeat only once a class is used up)."""
    pools = {d: rng.permutation(np.nonzero(mnist_labels == d)[0]) for d in range(10)}
    seen = dict.fromkeys(range(10), 0)
    picks = np.empty(len(wanted), dtype=np.int64)
    for i, d in enumerate(wanted.tolist()):
        picks[i] = pools[d][seen[d] % len(pools[d])]
        seen[d] += 1
    return picks


@SOURCES.register("fsdd-mnist-sum")
def fsdd_mnist_sum(spec):
    """Triples (recording, image, text of the sum mod 10); split train | test | all (FSDD takes
    >= 5 | < 5 | every take, with MNIST's split of ``pixel-csv``: stratified 80/20, seed 0).
    ``load_kwargs``: fsdd_dir and mnist_csv (required), pairs_per_recording (1 for train / all,
    3 for test: 900 held-out triples from 300 recordings), seed (0: the pairing).

    Columns: ``path`` (the wav), ``image``, ``speaker``, ``take``, ``label_audio`` and
    ``label_image`` (digits), ``label`` (the sum, named 'zero'..'nine') and ``caption`` (every
    ``SUM_CAPTIONS`` template, rotated per row)."""
    import datasets
    from PIL import Image

    opts = builtin_options(spec, {"fsdd_dir": None, "mnist_csv": None, "pairs_per_recording": None, "seed": 0})
    for key in ("fsdd_dir", "mnist_csv"):
        if not opts[key]:
            raise DataError(f"fsdd-mnist-sum needs load_kwargs.{key}")
    per = opts["pairs_per_recording"]
    per = int(per) if per is not None else (3 if spec.split == "test" else 1)
    if per < 1:
        raise DataError("fsdd-mnist-sum: load_kwargs.pairs_per_recording must be >= 1")
    paths, audio, speakers, takes = fsdd_rows(opts["fsdd_dir"], spec.split)
    images, labels = read_pixel_csv(opts["mnist_csv"])
    check_digit_labels(labels, f"fsdd-mnist-sum (load_kwargs.mnist_csv {opts['mnist_csv']})")
    mnist_rows = stratified_split(labels, spec.split, 0.2, 0)  # pixel-csv's default split
    split_code = {"train": 0, "test": 1}.get(spec.split, 2)  # the splits draw different pairings
    rng = np.random.default_rng([int(opts["seed"]), split_code])
    rec = np.repeat(np.arange(len(paths)), per)
    a = audio[rec]
    b = balanced_partners(a, rng)
    img = mnist_rows[pick_images(labels[mnist_rows], b, rng)]
    total = (a + b) % 10
    features = datasets.Features(
        {
            "path": datasets.Value("string"),
            "image": datasets.Image(),
            "speaker": datasets.Value("string"),
            "take": datasets.Value("int64"),
            "label_audio": datasets.Value("int64"),
            "label_image": datasets.Value("int64"),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
            "caption": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "path": [paths[r] for r in rec],
            "image": [Image.fromarray(images[r], mode="L") for r in img],
            "speaker": [speakers[r] for r in rec],
            "take": takes[rec],
            "label_audio": a,
            "label_image": b,
            "label": total,
            "caption": [rotated_captions(SUM_CAPTIONS, DIGIT_NAMES[t], k) for k, t in enumerate(total)],
        },
        features=features,
    )
