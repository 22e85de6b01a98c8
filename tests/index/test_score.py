"""align.index.score: recall against exact search."""

from __future__ import annotations

import numpy as np

from align.index.score import exact_topk


def test_exact_topk_is_exact():
    rng = np.random.default_rng(0)
    v, q = rng.standard_normal((50, 8)), rng.standard_normal((3, 8))
    assert (exact_topk(v, q, 5) == np.argsort(-(q @ v.T), axis=1)[:, :5]).all()
