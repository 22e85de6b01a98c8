"""Every plot goes through one save helper (``save_figure``): the PNG is written (its folder made
if missing), the path returned, and no figure is left open, not even when writing fails."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from align.eval import plots

IMG = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8))
PLOTS = {
    "loss": lambda p: plots.plot_loss_curve([(i, 1 / (i + 1)) for i in range(40)], p),
    "confusion": lambda p: plots.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], p),
    "recall": lambda p: plots.plot_recall_curve({"image_to_text/R@1": 0.2, "image_to_text/R@5": 0.6}, p),
    "grid": lambda p: plots.plot_query_grid(
        ["q1", "q2"], [[(IMG, 0.5, True), (IMG, 0.4, False)], [(IMG, 0.3, False)]], p
    ),
    "heatmap": lambda p: plots.plot_pair_heatmap([[None, 0.5], [0.7, None]], ["audio", "text"], p),
}


@pytest.mark.parametrize("kind", list(PLOTS))
def test_each_plot_writes_a_png_into_a_new_folder_and_closes_its_figure(tmp_path, kind):
    plt = plots._plt()
    plt.close("all")
    path = tmp_path / "new" / "folder" / f"{kind}.png"
    assert PLOTS[kind](str(path)) == path
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 50
    assert plt.get_fignums() == []


def test_a_failed_write_still_closes_the_figure(tmp_path):
    plt = plots._plt()
    plt.close("all")
    (tmp_path / "file").write_text("not a folder")
    fig, _ = plt.subplots()
    with pytest.raises(OSError):
        plots.save_figure(fig, tmp_path / "file" / "x.png")
    assert plt.get_fignums() == []
