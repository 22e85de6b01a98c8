"""``pixel-csv``: one image per CSV row, pixels then the label (e.g. the MNIST 5k subset)."""

from __future__ import annotations

from align.data.sources import SOURCES
from align.data.sources.common import (
    _digit_table,
    builtin_options,
    check_digit_labels,
    read_pixel_csv,
    single_file,
    stratified_split,
)


@SOURCES.register("pixel-csv")
def pixel_csv(spec):
    """Digits from a pixel CSV (``data_files``), e.g. MNIST 5k: ``load_kwargs`` ``shape`` ([28, 28]),
    ``label`` ('last' | 'first'), ``test_fraction`` (0.2), ``seed`` (0); split train | test | all."""
    from PIL import Image

    opts = builtin_options(spec, {"shape": [28, 28], "label": "last", "test_fraction": 0.2, "seed": 0})
    images, labels = read_pixel_csv(single_file(spec), tuple(opts["shape"]), opts["label"])
    check_digit_labels(labels, "pixel-csv")
    rows = stratified_split(labels, spec.split, float(opts["test_fraction"]), int(opts["seed"]))
    return _digit_table([Image.fromarray(images[r], mode="L") for r in rows], [int(labels[r]) for r in rows], rows)
