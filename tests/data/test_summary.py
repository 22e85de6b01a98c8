"""align.data.summary: what `align data` and the eval console line say about where rows come from."""

from __future__ import annotations

from align.config.dataset import DatasetSpec
from align.data.summary import describe_source
from align.data.tables import describe_spec


def _spec(**extra) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {"source": "csv", "data_files": "rows.csv", "columns": {"image": "path"}, "label_column": "digit", **extra}
    )


def test_held_out_rows_never_read_as_the_split_they_were_cut_from():
    text = describe_source(describe_spec(_spec(holdout={"take": "test", "seed": 3, "group": "writer"})))
    assert text == "csv split 'train', holdout test (test_fraction 0.2, seed 3, group 'writer')"
    folds = describe_source(describe_spec(_spec(holdout={"take": "train", "folds": 5, "fold": 2})))
    assert folds == "csv split 'train', holdout train (fold 2 of 5, seed 0)"


def test_where_filter_and_plain_split():
    assert describe_source(describe_spec(_spec())) == "csv split 'train'"
    where = describe_source(describe_spec(_spec(where={"digit": {"lt": 5}})))
    assert where == "csv split 'train', where {'digit': {'lt': 5}}"
