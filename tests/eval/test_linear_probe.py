"""The linear probe on real features (scikit-learn's digits pixels): sklearn's own fit at the chosen
C, C chosen on the training rows only, sklearn's two-class layout, the one-shot fallback."""

import numpy as np
import pytest
import torch

from align.eval.linear_probe import C_GRID, choose_c, fit_linear_probe, linear_probe_metrics


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_probe_is_sklearns_fit_at_the_c_cross_validation_chose(digits):
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, yte = digits
    w, b, record = fit_linear_probe(xtr, ytr, 10, seed=0)
    assert record["C"] in C_GRID and record["cv"]["folds"] == 5
    assert record["C"] == C_GRID[int(np.argmax(record["cv"]["accuracy"]))]
    ref = LogisticRegression(C=record["C"], max_iter=1000, random_state=0).fit(xtr, ytr)
    ours = torch.as_tensor(xte, dtype=torch.float32) @ w.T + b
    assert np.allclose(ours.numpy(), ref.decision_function(xte), atol=1e-4)
    m = linear_probe_metrics(xtr, ytr, xte, yte, classnames=[str(i) for i in range(10)])
    assert m["top1"] > 0.9 and m["n_train"] == 1200 and m["probe"]["C"] == record["C"]


def test_c_never_depends_on_the_test_rows(digits):
    xtr, ytr, xte, yte = digits
    a = linear_probe_metrics(xtr, ytr, xte, yte)
    b = linear_probe_metrics(xtr, ytr, xte[::-1][:100], yte[::-1][:100])
    assert a["probe"] == b["probe"]


def test_two_classes_and_one_shot(digits):
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, _, _ = digits
    keep = ytr < 2
    w, b, record = fit_linear_probe(xtr[keep], ytr[keep], 2)
    ref = LogisticRegression(C=record["C"], max_iter=1000, random_state=0).fit(xtr[keep], ytr[keep])
    probs = torch.softmax(torch.as_tensor(xtr[keep], dtype=torch.float32) @ w.T + b, 1).numpy()
    assert np.allclose(probs, ref.predict_proba(xtr[keep]), atol=1e-4)
    one = np.array([int(np.flatnonzero(ytr == c)[0]) for c in range(10)])
    c, record = choose_c(xtr[one], ytr[one])
    assert c == 1.0 and record["cv"] is None and "no fold" in record["reason"]
    with pytest.raises(ValueError, match=r"no training examples for class\(es\) \[9\]"):
        fit_linear_probe(xtr[ytr < 9], ytr[ytr < 9], 10)


def test_probe_in_the_train_time_eval_section(tmp_path):
    """``eval.probe`` runs during training (``train.eval_every``, ``best_metric: probe/top1``) and at
    the end, fitted on the run's own data.train by default, with its report beside the others."""
    from align.app.trainer import train
    from align.config.schema import config_from_dict
    from tests.support.adapting import adapt_config

    raw = adapt_config(tmp_path / "run", steps=20)
    raw["eval"]["probe"] = {"shots": 4}
    raw["train"].update(eval_every=10, best_metric="probe/top1", eval_at_end=True)
    cfg = config_from_dict(raw)
    assert cfg.eval.probe.query == "image" and cfg.eval.probe.data == cfg.data.train
    torch.set_num_threads(1)
    result = train(cfg)
    probe = result.eval_metrics["probe"]
    assert probe["n_train"] == 40 and 0.0 <= probe["top1"] <= 1.0 and probe["probe"]["cv"]["folds"] == 4
    assert result.best is not None and result.best[1] == pytest.approx(max(result.best[1], probe["top1"]))
    assert (tmp_path / "run" / "eval" / "probe.json").is_file()
    bad = adapt_config(tmp_path / "bad")
    bad["eval"]["probe"] = {"query": "text", "data": {**bad["data"]["train"], "columns": {"image": "image"}}}
    with pytest.raises(ValueError, match=r"config key 'eval.probe.data.columns': modality 'text' is not in"):
        config_from_dict(bad)
