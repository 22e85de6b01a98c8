"""Moving digits: short clips of a real MNIST digit sliding left, right, up or down.

The motion is synthetic: no labelled real video set is available offline, so the digits are real
(MNIST 5k) and the movement is made here. Its point is a task only temporal order can solve:
each clip's path is drawn so that a left clip is a right clip played backwards (same start
distribution, same frames, reversed order), and likewise up/down. So the *set* of frames carries
the axis (horizontal/vertical) but never the sign; averaging frame features is at chance between
opposite directions, a temporal model is not.

``moving_digits_table`` is the builtin dataset source ``moving-digits``:

    DatasetSpec(source="moving-digits", data_files=".../mnist_5k.csv.gz", split="train",
                load_kwargs={"frames": 8, "size": 32, "clips_per_image": 1, "seed": 0})
"""

from __future__ import annotations

import numpy as np

from align.data.sources import SOURCES
from align.data.sources.common import (
    DIGIT_NAMES,
    builtin_options,
    check_digit_labels,
    read_pixel_csv,
    rotated_captions,
    single_file,
    stratified_split,
)
from align.errors import DataError

DIRECTIONS = ["left", "right", "up", "down"]
# every template takes one class name, "<digit> moving <direction>" (so zero-shot prompts are the
# same templates filled with the class names)
VIDEO_CAPTIONS = [
    "the number {}.",
    "a video of the digit {}.",
    "a handwritten {}.",
    "a clip of the number {}.",
    "the digit {} across the screen.",
    "a short video of a handwritten {}.",
]


def class_names() -> list[str]:
    """The 40 classes, index digit * 4 + direction: 'zero moving left', ..., 'nine moving down'."""
    return [f"{d} moving {m}" for d in DIGIT_NAMES for m in DIRECTIONS]


def resize_digits(images: np.ndarray, digit_size: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, digit_size, digit_size] (antialiased bilinear)."""
    import torch
    import torch.nn.functional as F

    if images.shape[-1] == digit_size and images.shape[-2] == digit_size:
        return images.copy()
    x = torch.from_numpy(images).float()[:, None]
    y = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear", antialias=True, align_corners=False)
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def paths(
    n: int, frames: int, free: int, travel: int, rng: np.random.Generator, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (rows, cols) [n, frames] of each digit.

    The moving coordinate covers ``[a, a + travel]`` with ``a`` uniform in ``[0, free - travel]``
    for every direction (forward for right/down, backward for left/up), so a clip and its
    opposite have the same frames; the other coordinate is uniform in ``[0, free]`` and fixed.
    """
    a = rng.integers(0, free - travel + 1, size=n)
    other = rng.integers(0, free + 1, size=n)
    ramp = np.rint(np.linspace(0, travel, frames)).astype(np.int64)
    forward = a[:, None] + ramp[None, :]
    backward = a[:, None] + ramp[::-1][None, :]
    along = np.where(np.isin(directions, (1, 3))[:, None], forward, backward)  # right, down forward
    fixed = np.repeat(other[:, None], frames, axis=1)
    horizontal = (directions < 2)[:, None]
    rows = np.where(horizontal, fixed, along)
    cols = np.where(horizontal, along, fixed)
    return rows, cols


def moving_digit_clips(
    images: np.ndarray,
    labels: np.ndarray,
    frames: int = 8,
    size: int = 32,
    seed: int = 0,
    digit_size: int | None = None,
    directions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips uint8 [N, frames, size, size] of each digit moving across a black canvas, and each
    clip's direction (index into ``DIRECTIONS``; balanced, shuffled unless given).

    The digit is scaled to ``digit_size`` (default size // 2) and always fully in view; it travels
    3/4 of the free space (``size - digit_size``), at least one pixel per frame where possible.
    ``labels`` is only checked for length (the digit identity is the caller's).
    """
    images = np.asarray(images, dtype=np.uint8)
    n = len(images)
    if images.ndim != 3 or len(labels) != n:
        raise ValueError(f"images must be [N, H, W] with one label each, got {images.shape} and {len(labels)}")
    digit_size = digit_size or size // 2
    free = size - digit_size
    if frames < 2 or free < 1:
        raise ValueError(
            f"need frames >= 2 and digit_size < size, got frames={frames}, size={size}, digit_size={digit_size}"
        )
    rng = np.random.default_rng(seed)
    if directions is None:
        directions = rng.permutation(np.arange(n) % len(DIRECTIONS))
    directions = np.asarray(directions, dtype=np.int64)
    travel = max(min(free, frames - 1), (3 * free) // 4)
    rows, cols = paths(n, frames, free, travel, rng, directions)
    digits = resize_digits(images, digit_size)
    clips = np.zeros((n, frames, size, size), dtype=np.uint8)
    clip, span = np.arange(n)[:, None], np.arange(digit_size)[None, :]
    for t in range(frames):  # paste one digit row into every clip at once
        for dy in range(digit_size):
            clips[clip, t, (rows[:, t] + dy)[:, None], cols[:, t][:, None] + span] = digits[:, dy, :]
    return clips, directions


@SOURCES.register("moving-digits")
def moving_digits_table(spec):
    """Builtin source ``moving-digits``: ``data_files`` is a pixel CSV of 28x28 digits (MNIST 5k),
    split train | test | all (the same stratified split as ``pixel-csv``). ``load_kwargs``: frames
    (8), size (32), digit_size (size // 2), clips_per_image (1, each its own direction and path),
    seed (0), test_fraction (0.2), label ('last' | 'first'), digits (all; or a list, e.g. [0, 1], to
    keep only those digits: a smaller task where motion matters more).

    Columns: ``video`` (uint8 [frames, size, size]), ``label`` (digit), ``direction``, ``class``
    (digit * 4 + direction, named '<digit> moving <direction>') and ``caption`` (every template,
    rotated per row: training draws one, evaluation uses the first).
    """
    import datasets

    opts = builtin_options(
        spec,
        {
            "frames": 8,
            "size": 32,
            "digit_size": None,
            "clips_per_image": 1,
            "seed": 0,
            "test_fraction": 0.2,
            "label": "last",
            "digits": None,
        },
    )
    frames, size, per = int(opts["frames"]), int(opts["size"]), int(opts["clips_per_image"])
    if per < 1:
        raise DataError("moving-digits: load_kwargs.clips_per_image must be >= 1")
    images, labels = read_pixel_csv(single_file(spec), (28, 28), opts["label"])
    check_digit_labels(labels, "moving-digits")
    rows = stratified_split(labels, spec.split, float(opts["test_fraction"]), int(opts["seed"]))
    if opts["digits"] is not None:
        rows = rows[np.isin(labels[rows], np.asarray(opts["digits"], dtype=np.int64))]
        if len(rows) == 0:
            raise DataError(f"moving-digits: no rows with load_kwargs.digits {opts['digits']}")
    rows = np.repeat(rows, per)
    split_code = {"train": 0, "test": 1}.get(spec.split, 2)  # the splits draw different paths
    seed = int(np.random.SeedSequence([int(opts["seed"]), split_code]).generate_state(1)[0])
    try:
        clips, directions = moving_digit_clips(
            images[rows], labels[rows], frames, size, seed=seed, digit_size=opts["digit_size"]
        )
    except ValueError as err:
        raise DataError(f"moving-digits: {err}") from None
    names = class_names()
    classes = labels[rows] * len(DIRECTIONS) + directions
    features = datasets.Features(
        {
            "video": datasets.Array3D(shape=(frames, size, size), dtype="uint8"),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
            "direction": datasets.ClassLabel(names=DIRECTIONS),
            "class": datasets.ClassLabel(names=names),
            "caption": datasets.Sequence(datasets.Value("string")),
        }
    )
    captions = [rotated_captions(VIDEO_CAPTIONS, names[c], k) for k, c in enumerate(classes)]
    return datasets.Dataset.from_dict(
        {"video": clips, "label": labels[rows], "direction": directions, "class": classes, "caption": captions},
        features=features,
    )
