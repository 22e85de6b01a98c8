"""``sklearn-digits``: scikit-learn's 1,797 real 8x8 digits (ship inside scikit-learn; the demo)."""

from __future__ import annotations

import numpy as np

from align.data.sources import SOURCES
from align.data.sources.common import _digit_table, stratified_split
from align.errors import DataError


@SOURCES.register("sklearn-digits")
def sklearn_digits(spec_or_split):
    """scikit-learn's 1,797 real 8x8 handwritten digits, fixed stratified 80/20 train/test split.

    Each row has ``image`` (PIL), ``label`` (0-9) and ``caption``: every caption template filled
    with the digit's name, rotated per row (training draws one at random each epoch).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    split = spec_or_split if isinstance(spec_or_split, str) else spec_or_split.split
    if split not in ("train", "test"):
        raise DataError(f"sklearn-digits has splits 'train' and 'test', not '{split}'")
    digits = load_digits()
    rows = stratified_split(digits.target, split, 0.2, 0)
    images = [Image.fromarray((digits.images[r] * (255.0 / 16.0)).round().astype(np.uint8), mode="L") for r in rows]
    return _digit_table(images, [int(digits.target[r]) for r in rows], rows)
