"""``fit``: statistics and vocabularies learnt from the training column before training.

Audio ``norm_stats: fit`` equals the mean / std of every training clip's log-mel computed here
independently; graph ``node_vocab`` / ``edge_vocab: fit`` equal 1 + the per-column maximum of the
training graphs' categories. Through ``align train`` the fitted values land in the run's config,
so the reloaded model preprocesses exactly as the trained one did, and the tower still learns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.tiny import TINY_MODALITIES

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FSDD = DATA / "audio" / "fsdd" / "recordings"
TU = DATA / "graph" / "tu"
needs_fsdd = pytest.mark.skipif(len(list(FSDD.glob("*.wav"))) < 300, reason=f"FSDD not found in {FSDD}")
needs_tu = pytest.mark.skipif(not (TU / "MUTAG").exists(), reason=f"TU datasets not found in {TU}")
AUDIO = {
    "sample_rate": 8000,
    "clip_seconds": 0.5,
    "n_mels": 32,
    "patch_size": 8,
    "patch_stride": 8,
    "width": 32,
    "layers": 1,
    "heads": 2,
}


@needs_fsdd
def test_audio_norm_stats_fit_equals_the_clips_statistics():
    from align.modalities import build_adapter
    from align.modalities.audio import ASTAudioOptions, LogMel
    from align.modalities.audio_io import crop_or_pad, load_audio
    from align.registry import ADAPTERS

    wavs = sorted(FSDD.glob("*.wav"))[:40]
    cls = ADAPTERS.get("audio")
    fitted = cls.fit(cls.Options.model_validate({**AUDIO, "norm_stats": "fit"}), [str(p) for p in wavs])
    logmel = LogMel(ASTAudioOptions(**AUDIO))
    specs = np.concatenate([logmel.log_mel(crop_or_pad(load_audio(str(p), 8000), 4000, False)).ravel() for p in wavs])
    np.testing.assert_allclose(fitted["norm_stats"], [specs.mean(), specs.std()], rtol=1e-6)
    assert cls.fit(cls.Options.model_validate(AUDIO), [str(wavs[0])]) == {}  # per-utterance: nothing
    with pytest.raises(ValueError, match="norm_stats 'fit'"):  # unfitted: refused, not guessed
        build_adapter("audio", {**AUDIO, "norm_stats": "fit"}).preprocessor()
    pre = build_adapter("audio", {**AUDIO, **fitted}).preprocessor()
    spec = pre(str(wavs[0]), train=False)  # dataset statistics: one clip is not mean 0 / std 1
    assert abs(float(spec.mean())) > 1e-3 and abs(float(spec.std()) - 1) > 1e-3


@needs_tu
def test_graph_vocab_fit_counts_the_training_categories():
    from align.config.dataset import DatasetSpec
    from align.data.tables import load_table
    from align.modalities import build_adapter
    from align.modalities.graph_io import to_graph
    from align.registry import ADAPTERS

    table = load_table(
        DatasetSpec(
            source="tu-dataset",
            data_dir=str(TU),
            split="train",
            load_kwargs={"name": "MUTAG", "folds": 10, "fold": 0, "seed": 0},
            columns={"graph": "graph"},
        )
    )
    rows = list(table["graph"])
    cls = ADAPTERS.get("graph")
    fitted = cls.fit(cls.Options.model_validate({"node_vocab": "fit", "edge_vocab": "fit"}), rows)
    graphs = [to_graph(r) for r in rows]
    assert fitted["node_vocab"] == (torch.cat([g.x for g in graphs]).long().amax(0) + 1).tolist()
    assert fitted["edge_vocab"] == (torch.cat([g.edge_attr for g in graphs]).long().amax(0) + 1).tolist()
    pre = build_adapter("graph", {**fitted, "width": 16, "layers": 1}).preprocessor()
    batch = pre.collate([pre(r, train=True) for r in rows[:8]])
    assert batch.x.dtype == torch.long and batch.x.shape[1] == len(fitted["node_vocab"])
    with pytest.raises(ValueError, match="node_vocab 'fit'"):
        build_adapter("graph", {"node_vocab": "fit"})
    with pytest.raises(ValueError, match="training row 0"):  # float features cannot be categories
        cls.fit(
            cls.Options.model_validate({"node_vocab": "fit"}),
            [{"edge_index": [[0], [1]], "x": [[0.5], [1.0]], "num_nodes": 2}],
        )


@needs_fsdd
def test_fitted_options_travel_with_the_run(tmp_path):
    """align train fits norm_stats, writes them into config.yaml and the checkpoint; the reloaded
    model's preprocessing is the trained one's, and the AST still learns."""
    import yaml

    from align.app.trainer import train
    from align.config.schema import config_from_dict
    from align.model.checkpoint import load_model

    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "model": {
                "embed_dim": 16,
                "modalities": {"audio": {"options": {**AUDIO, "norm_stats": "fit"}}, "text": TINY_MODALITIES["text"]},
            },
            "data": {
                "train": {
                    "source": "files",
                    "data_files": str(FSDD / "*_jackson_*.wav"),
                    "load_kwargs": {"pattern": r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"},
                    "columns": {"audio": "path", "text": "label_captions"},
                    "label_column": "label",
                    "label_names": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
                    "caption_templates": ["the spoken word {}."],
                    "max_samples": 200,
                }
            },
            "train": {
                "batch_size": 32,
                "steps": 40,
                "lr": 2e-3,
                "weight_decay": 0.0,
                "progress": False,
                "log_every": 5,
            },
        }
    )
    result = train(cfg)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    stats = stored["model"]["modalities"]["audio"]["options"]["norm_stats"]
    assert isinstance(stats, list) and len(stats) == 2 and stats[1] > 0
    losses = [v for _, v in result.losses]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    model, _ = load_model(tmp_path / "run")
    wav = str(sorted(FSDD.glob("*_jackson_*.wav"))[0])
    torch.testing.assert_close(
        model.preprocessors()["audio"](wav, train=False), result.model.preprocessors()["audio"](wav, train=False)
    )
    assert list(model.adapters["audio"].options.norm_stats) == pytest.approx(stats)
