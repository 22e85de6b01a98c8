"""Tabular adapter: every row form gives the same standardised tensor, fit's statistics equal
numpy's, bad rows are SampleErrors naming the feature, unfitted options fail clearly, the
sklearn-table source gives the expected splits and class names, and a short training run
classifies the held-out rows zero-shot far above chance (next to a logistic regression)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from align.config.dataset import DatasetSpec
from align.config.schema import config_from_dict
from align.data.tables import Collator, PairedDataset, load_table
from align.errors import ConfigError, DataError, SampleError
from align.modalities import build_adapter
from align.registry import ADAPTERS


def table(name: str, split: str):
    return load_table(
        DatasetSpec(
            source="sklearn-table",
            load_kwargs={"name": name},
            split=split,
            columns={"tabular": "features"},
            label_column="label",
        )
    )


def test_every_row_form_gives_the_same_standardised_tensor_and_gradients_flow():
    cls = ADAPTERS.get("tabular")
    assert cls.__name__ == "TabularAdapter" and cls.__module__ == "align.modalities.tabular"
    mean, std = [1.0, -2.0, 0.5, 10.0], [2.0, 0.5, 1.0, 4.0]
    cols = ["a", "b", "c", "d"]
    adapter = build_adapter(
        "tabular", {"num_features": 4, "mean": mean, "std": std, "columns": cols, "widths": [16, 8], "norm": "batch"}
    )
    assert adapter.feature_dim == 8
    pre = adapter.preprocessor()
    row = [3.0, -1.0, 4.0, 2]
    forms = [
        row,
        tuple(row),
        np.array(row),
        np.array(row, np.float32),
        np.array([3, -1, 4, 2]),
        torch.tensor(row),
        dict(zip(cols, row)),
        {"z": "ignored", **dict(zip(reversed(cols), reversed(row)))},
    ]
    want = (np.array(row) - np.array(mean)) / np.array(std)
    for raw in forms:
        x = pre(raw, train=True)
        assert x.dtype == torch.float32 and x.shape == (4,)
        np.testing.assert_allclose(x.numpy(), want, rtol=1e-6)
    assert torch.equal(pre(row, train=True), pre(row, train=False))  # nothing random
    plain = build_adapter("tabular", {"num_features": 1, "standardize": False, "widths": [4]}).preprocessor()
    assert plain(7, train=False).tolist() == [7.0] and plain([True], train=False).tolist() == [1.0]
    batch = pre.collate([pre(r, train=True) for r in ([1, 2, 3, 4], [0, 0, 0, 0], row)])
    assert batch.shape == (3, 4)
    adapter.train()
    adapter(batch).square().sum().backward()
    grads = [p.grad for p in adapter.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    adapter.eval()
    with torch.no_grad():  # eval mode: a row's features do not depend on the rest of the batch
        torch.testing.assert_close(adapter(batch)[:1], adapter(batch[:1]))
    for norm in ("layer", "none"):
        assert build_adapter("tabular", {"num_features": 4, "mean": mean, "std": std, "norm": norm, "widths": [5]})(
            batch
        ).shape == (3, 5)


def test_fit_matches_numpy_and_keeps_what_the_user_set(caplog):
    cls = ADAPTERS.get("tabular")
    rows = list(table("wine", "train")["features"])
    x = np.array(rows)
    fitted = cls.fit(cls.Options(), rows)
    assert set(fitted) == {"num_features", "mean", "std"} and fitted["num_features"] == 13 == x.shape[1]
    assert type(fitted["num_features"]) is int and all(type(v) is float for v in fitted["mean"] + fitted["std"])
    np.testing.assert_allclose(fitted["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(fitted["std"], x.std(0), rtol=1e-12)  # population std, as StandardScaler
    # fitted options build an adapter whose preprocessing equals StandardScaler's
    from sklearn.preprocessing import StandardScaler

    pre = build_adapter("tabular", {**fitted, "widths": [8]}).preprocessor()
    np.testing.assert_allclose(
        torch.stack([pre(r, train=False) for r in rows]).numpy(),
        StandardScaler().fit_transform(x),
        rtol=1e-5,
        atol=1e-5,
    )
    # a constant column gets std 1.0, not 0; options the user set are not refitted
    const = [[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]]
    assert cls.fit({"num_features": 2}, const) == {"mean": [2.0, 5.0], "std": [pytest.approx(np.std([1, 3, 2])), 1.0]}
    assert cls.fit({"mean": [0.0, 0.0]}, const) == {"num_features": 2, "std": [pytest.approx(np.std([1, 3, 2])), 1.0]}
    assert cls.fit({"standardize": False}, const) == {"num_features": 2}
    assert cls.fit({"num_features": 2, "mean": [0, 0], "std": [1, 1]}, const) == {}
    # dict rows: the columns (first row's order) are fitted too
    dicts = [{"b": r[1], "a": r[0]} for r in const]
    assert cls.fit({}, dicts) == {
        "columns": ["b", "a"],
        "num_features": 2,
        "mean": [5.0, 2.0],
        "std": [1.0, pytest.approx(np.std([1, 3, 2]))],
    }
    # unreadable rows are left out of the statistics (preprocessing raises or skips them later)
    with caplog.at_level("WARNING", logger="align.modalities.tabular"):
        messy = cls.fit({}, const + [[float("nan"), 1.0], [1.0, 2.0, 3.0], "x"])
    assert messy == cls.fit({}, const)
    assert "left 3 of 6 training rows out" in caplog.text and "row 3: feature 0 is NaN" in caplog.text
    with pytest.raises(SampleError, match=r"no usable training rows among 2 \(row 0: feature 1 is inf"):
        cls.fit({}, [[1.0, float("inf")], ["a", 1.0]])


def test_bad_rows_are_sample_errors_naming_what_is_wrong():
    opts = {"num_features": 3, "mean": [0, 0, 0], "std": [1, 1, 1], "widths": [4]}
    pre = build_adapter("tabular", opts).preprocessor()
    named = build_adapter("tabular", {**opts, "columns": ["alcohol", "ash", "hue"]}).preprocessor()
    cases = [
        (pre, [1.0, 2.0], r"row has 2 features, expected 3 \(num_features\)"),
        (pre, [1.0, float("nan"), 3.0], "feature 1 is NaN"),
        (named, [1.0, 2.0, float("-inf")], "feature 2 \\('hue'\\) is inf"),
        (named, {"alcohol": 1.0, "ash": float("nan"), "hue": 1.0}, "feature 1 \\('ash'\\) is NaN"),
        (pre, [1.0, "2.5", 3.0], r"feature 1 is not a number: '2.5'"),
        (pre, [1.0, None, 3.0], r"feature 1 is not a number: None"),
        (named, {"alcohol": 1.0, "ash": "high", "hue": 1.0}, r"feature 1 \('ash'\) is not a number: 'high'"),
        (named, {"alcohol": 1.0, "hue": 1.0}, r"row has no column\(s\) \['ash'\]"),
        (pre, {"alcohol": 1.0}, "needs the tabular option 'columns'"),
        (pre, [[1.0, 2.0, 3.0]], r"must be flat \[num_features\], got shape \[1, 3\]"),
        (pre, [[1.0], [2.0, 3.0]], "must be a flat list of numbers"),
        (pre, [], "empty row"),
        (pre, "1,2,3", "must be a list / array / tensor of numbers or a dict"),
        (pre, None, "got NoneType"),
        (pre, [1.0, 2.0, 1e300], r"feature 2 = 1e\+300 after standardisation does not fit in float32"),
        (pre, np.array([1 + 2j, 0, 0]), r"feature 0 is not a number: \(1\+2j\) \(complex\)"),
    ]
    for p, raw, message in cases:
        with pytest.raises(SampleError, match=message):
            p(raw, train=False)
    # through the data path the row and column are named too
    import datasets

    rows = datasets.Dataset.from_dict({"x": [[1.0, 2.0, 3.0], [1.0, float("nan"), 3.0]]})
    ds = PairedDataset(rows, {"tabular": "x"}, {"tabular": pre}, train=False, name="eval.data")
    assert ds[0]["tabular"].shape == (3,)
    with pytest.raises(SampleError, match=r"eval.data row 1, column 'x' \(tabular\): feature 1 is NaN"):
        ds[1]


def test_unfitted_or_inconsistent_options_fail_clearly():
    with pytest.raises(
        ConfigError,
        match=r"option\(s\) \['num_features', 'mean', 'std'\] are not set.*"
        "TabularAdapter.fit",
    ):
        build_adapter("tabular", {})
    with pytest.raises(ConfigError, match=r"\['mean', 'std'\] are not set"):
        build_adapter("tabular", {"num_features": 3})
    assert build_adapter("tabular", {"num_features": 3, "standardize": False}).feature_dim == 128
    for opts, message in (
        ({"num_features": 3, "mean": [0, 0]}, "num_features 3, mean 2"),
        ({"columns": ["a", "b"], "std": [1, 1, 1]}, "columns 2, std 3"),
        ({"std": [1.0, 0.0]}, r"std must be finite and > 0; entries \[1\]"),
        ({"mean": [float("nan")]}, "mean must be finite"),
        ({"standardize": False, "mean": [0.0]}, "standardize is false"),
        ({"columns": ["a", "a"]}, r"duplicated: \['a'\]"),
        ({"encoder": "transformer"}, "'mlp'"),
        ({"widths": []}, "at least 1"),
        ({"num_feature": 3}, "Extra inputs"),
    ):
        with pytest.raises(Exception, match=message):
            ADAPTERS.get("tabular").Options.model_validate(opts)
    cfg = {
        "model": {
            "modalities": {
                "tabular": {"options": {"num_features": 2, "mean": [0.0]}},
                "text": {"options": {"text_cfg": {}}},
            }
        },
        "data": {"train": {"source": "sklearn-table", "columns": {"tabular": "features", "text": "t"}}},
    }
    with pytest.raises(ConfigError, match=r"model.modalities.tabular.options"):
        config_from_dict(cfg)


def test_sklearn_table_source_counts_splits_and_class_names():
    expected = {
        "wine": (124, 54, ["cultivar one", "cultivar two", "cultivar three"], [59, 71, 48], 13),
        "breast_cancer": (398, 171, ["malignant", "benign"], [212, 357], 30),
        "iris": (105, 45, ["setosa", "versicolor", "virginica"], [50, 50, 50], 4),
    }
    for name, (n_train, n_test, names, counts, width) in expected.items():
        train, test, whole = table(name, "train"), table(name, "test"), table(name, "all")
        assert (len(train), len(test), len(whole)) == (n_train, n_test, sum(counts))
        for t in (train, test, whole):
            assert t.features["label"].names == names
        assert np.bincount(whole["label"]).tolist() == counts
        for t in (train, test):  # stratified: each class keeps its share on both sides
            np.testing.assert_allclose(np.bincount(t["label"]) / len(t), np.array(counts) / sum(counts), atol=0.02)
        ids = {s: list(t["id"]) for s, t in (("train", train), ("test", test), ("all", whole))}
        assert set(ids["train"]).isdisjoint(ids["test"]) and sorted(ids["train"] + ids["test"]) == ids["all"]
        assert {len(r) for r in whole["features"]} == {width}
        assert list(table(name, "test")["id"]) == ids["test"]  # fixed split
    from sklearn.datasets import load_wine

    wine = load_wine()
    test = table("wine", "test")
    np.testing.assert_array_equal(np.array(test["features"]), wine.data[test["id"]])
    np.testing.assert_array_equal(test["label"], wine.target[test["id"]])
    assert "proline" in test.info.description and "od280/od315_of_diluted_wines" in test.info.description
    moved = load_table(
        DatasetSpec(
            source="sklearn-table",
            split="test",
            columns={"tabular": "features"},
            load_kwargs={"name": "wine", "test_fraction": 0.5, "seed": 1},
        )
    )
    assert len(moved) == 89 and list(moved["id"]) != list(test["id"])
    for kwargs, message in (
        ({"name": "boston"}, r"one of \['breast_cancer', 'iris', 'wine'\], not 'boston'"),
        ({}, "needs load_kwargs.name"),
        ({"name": "wine", "folds": 5}, r"unknown load_kwargs \['folds'\]"),
    ):
        with pytest.raises(DataError, match=message):
            load_table(DatasetSpec(source="sklearn-table", columns={"tabular": "features"}, load_kwargs=kwargs))


def test_named_columns_packed_into_dicts_feed_the_adapter():
    """A table with one column per feature (a CSV's layout): pack_columns makes each row a dict,
    fit learns the column order, and the tensors equal those of the list column."""
    import datasets
    from sklearn.datasets import load_wine

    names = [n.replace("/", "_") for n in load_wine().feature_names]
    src = table("wine", "train")
    x = np.array(list(src["features"]))
    wide = datasets.Dataset.from_dict(
        {n: x[:, names.index(n)].tolist() for n in reversed(names)} | {"label": list(src["label"])}
    )
    from align.data.tables import pack_columns

    packed = pack_columns(wide, {"row": names}, "data.train")
    cls = ADAPTERS.get("tabular")
    fitted = cls.fit({}, list(packed["row"]))
    assert fitted["columns"] == names and fitted == {"columns": names, **cls.fit({}, list(src["features"]))}
    pre = {"tabular": build_adapter("tabular", {**fitted, "widths": [8]}).preprocessor()}
    a = Collator(pre)([PairedDataset(packed, {"tabular": "row"}, pre, train=False)[i] for i in range(10)])
    pre_list = {
        "tabular": build_adapter("tabular", {**cls.fit({}, list(src["features"])), "widths": [8]}).preprocessor()
    }
    b = Collator(pre_list)([PairedDataset(src, {"tabular": "features"}, pre_list, train=False)[i] for i in range(10)])
    torch.testing.assert_close(a["tabular"], b["tabular"])


TINY_TEXT = {
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "output_dim": 32,
}


def logistic_regression_top1(name: str) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = table(name, "train"), table(name, "test")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(np.array(train["features"]), train["label"])
    return float(clf.score(np.array(test["features"]), test["label"]))


@pytest.mark.parametrize(
    "config, chance, floor", [("wine-tabular-text.yaml", 1 / 3, 0.85), ("breast-cancer-tabular-text.yaml", 1 / 2, 0.85)]
)
def test_short_training_classifies_the_test_split_zero_shot(tmp_path, capsys, config, chance, floor):
    """The shipped config, shrunk (tiny towers, 120 steps), with the tabular options fitted here by
    TabularAdapter.fit on the training split: zero-shot top-1 on the held-out 30% is far above
    chance (and printed beside a logistic regression on the same split)."""
    import yaml

    from align.app.trainer import train

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / config).read_text())
    tab = cfg["model"]["modalities"]["tabular"]
    assert not {"num_features", "mean", "std"} & set(tab["options"])  # the config leaves them to fit
    spec = DatasetSpec(**cfg["data"]["train"])
    cls = ADAPTERS.get("tabular")
    tab["options"] = {
        **tab["options"],
        "widths": [64, 64],
        **cls.fit(cls.Options(**tab["options"]), list(load_table(spec)[spec.columns["tabular"]])),
    }
    cfg["model"]["modalities"]["text"]["options"] = TINY_TEXT
    cfg["model"]["embed_dim"] = 32
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["train"].update(steps=120, warmup_steps=10, lr=2e-3, progress=False, log_every=20)
    result = train(config_from_dict(cfg))
    zs = result.eval_metrics["zeroshot"]
    logreg = logistic_regression_top1(spec.load_kwargs["name"])
    with capsys.disabled():
        print(
            f"\n{config} (120 steps): zero-shot top-1 {zs['top1']:.3f} on {zs['n']} test rows; "
            f"logistic regression {logreg:.3f}; chance {chance:.3f}"
        )
    assert zs["top1"] >= floor and zs["top1"] >= 1.5 * chance, zs
    saved = yaml.safe_load((result.final_checkpoint / "config.yaml").read_text())
    assert saved["model"]["modalities"]["tabular"]["options"]["mean"] == tab["options"]["mean"]


def test_the_trainer_fits_the_options_and_checkpoints_carry_them(tmp_path, capsys):
    """``align train`` on the shipped config, which leaves num_features / mean / std out: the trainer
    calls TabularAdapter.fit on data.train before building the model, says so, saves the fitted
    options in the run's config, and a reloaded checkpoint preprocesses with them."""
    import yaml

    from align.app.cli import main
    from align.model.checkpoint import load_model

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "wine-tabular-text.yaml").read_text())
    assert "mean" not in cfg["model"]["modalities"]["tabular"].get("options", {})
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["train"].update(steps=3, progress=False, log_every=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    assert (
        "fitted on the training data: model.modalities.tabular.options: mean, num_features, std"
        in capsys.readouterr().out
    )
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["modalities"]["tabular"]["options"]
    from align.config.dataset import DatasetSpec
    from align.data.sources import SOURCES

    table = SOURCES.get("sklearn-table")(DatasetSpec.model_validate(cfg["data"]["train"]))
    x = np.asarray(table["features"], dtype=np.float64)
    assert saved["num_features"] == 13 and np.allclose(saved["mean"], x.mean(0)) and np.allclose(saved["std"], x.std(0))
    model, _ = load_model(tmp_path / "run")
    assert model.adapters["tabular"].options.mean == saved["mean"]
