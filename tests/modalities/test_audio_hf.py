"""HF transformers audio encoders behind the audio adapter: tiny AST, wav2vec2, Whisper and CLAP
models built and saved here with their feature extractors, loaded by folder (the same code path as a
hub id), and checked against calling the model directly. Nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import soundfile as sf
import torch

from align.modalities import build_adapter
from align.modalities.audio_io import load_audio

FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "audio" / "fsdd" / "recordings"
WAVS = sorted(FSDD.glob("*.wav"))
pytestmark = pytest.mark.skipif(len(WAVS) < 300, reason=f"FSDD recordings not found in {FSDD}")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    import transformers as tf

    root = tmp_path_factory.mktemp("hf_audio")
    small = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    torch.manual_seed(0)
    models = {
        "ast": (
            tf.ASTModel(tf.ASTConfig(hidden_size=32, num_mel_bins=16, max_length=64, **small)),
            tf.ASTFeatureExtractor(num_mel_bins=16, max_length=64),
        ),
        "wav2vec2": (
            tf.Wav2Vec2Model(
                tf.Wav2Vec2Config(
                    hidden_size=32,
                    conv_dim=(16, 16),
                    conv_kernel=(10, 3),
                    conv_stride=(5, 2),
                    num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2,
                    feat_extract_norm="layer",
                    do_stable_layer_norm=True,
                    vocab_size=10,
                    **small,
                )
            ),
            tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True),
        ),
        "whisper": (
            tf.WhisperModel(
                tf.WhisperConfig(
                    d_model=32,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=37,
                    decoder_ffn_dim=37,
                    num_mel_bins=16,
                    max_source_positions=50,
                    max_target_positions=16,
                    vocab_size=100,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=2,
                    decoder_start_token_id=1,
                )
            ),
            tf.WhisperFeatureExtractor(feature_size=16, chunk_length=1),
        ),  # 1 s windows = 100 frames
        "clap": (
            tf.ClapModel(
                tf.ClapConfig(
                    audio_config=dict(
                        depths=[1, 1],
                        num_attention_heads=[2, 2],
                        patch_embeds_hidden_size=16,
                        hidden_size=32,
                        num_mel_bins=16,
                        spec_size=64,
                        window_size=4,
                    ),
                    text_config=dict(
                        vocab_size=50,
                        hidden_size=16,
                        num_hidden_layers=1,
                        num_attention_heads=2,
                        intermediate_size=20,
                        max_position_embeddings=40,
                    ),
                    projection_dim=16,
                )
            ),
            tf.ClapFeatureExtractor(
                feature_size=16,
                sampling_rate=16000,
                hop_length=160,
                fft_window_size=400,
                max_length_s=1,
                frequency_max=8000,
                truncation="rand_trunc",
            ),
        ),
    }
    for name, (model, fe) in models.items():
        model.save_pretrained(root / name)
        fe.save_pretrained(root / name)
    return root


def _hf(hf_dirs, name, **options):
    return build_adapter("audio", {"encoder": "hf", "hf_model": str(hf_dirs / name), **options}).eval()


def _batch(adapter, files):
    pre = adapter.preprocessor()
    return pre.collate([pre(p, train=False) for p in files])


def test_hf_ast_features_match_the_model(hf_dirs):
    from transformers import ASTModel, AutoFeatureExtractor

    adapter = _hf(hf_dirs, "ast", pooling="cls")
    batch = _batch(adapter, WAVS[:3])
    fe = AutoFeatureExtractor.from_pretrained(hf_dirs / "ast")
    direct = fe([load_audio(p, 16000)[:16000] for p in WAVS[:3]], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(batch["input_values"], direct["input_values"])
    model = ASTModel.from_pretrained(hf_dirs / "ast").eval()
    with torch.no_grad():
        out = model(input_values=direct["input_values"])
        torch.testing.assert_close(adapter(batch), out.last_hidden_state[:, 0])
        torch.testing.assert_close(_hf(hf_dirs, "ast", pooling="pooler")(batch), out.pooler_output)
    assert adapter.feature_dim == 32


def test_hf_wav2vec2_mean_ignores_padding(hf_dirs):
    from transformers import Wav2Vec2Model

    files = sorted(WAVS[:40], key=lambda p: sf.info(p).frames)[::13][:3]  # three different lengths
    adapter = _hf(hf_dirs, "wav2vec2", clip_seconds=2.0)
    batch = _batch(adapter, files)
    lengths = [len(load_audio(p, 16000)) for p in files]  # resampled 8 kHz -> 16 kHz
    assert batch["attention_mask"].sum(1).tolist() == lengths and len(set(lengths)) == 3
    model = Wav2Vec2Model.from_pretrained(hf_dirs / "wav2vec2").eval()
    with torch.no_grad():
        feats = adapter(batch)
        hidden = model(**batch).last_hidden_state
        mask = model._get_feature_vector_attention_mask(hidden.shape[1], batch["attention_mask"])
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(feats, expected)
        alone = adapter(_batch(adapter, files[:1]))
    torch.testing.assert_close(alone[0], feats[0], rtol=1e-4, atol=1e-5)
    cropped = _batch(_hf(hf_dirs, "wav2vec2", clip_seconds=0.25), files)
    assert cropped["input_values"].shape == (3, 4000) and cropped["attention_mask"].all()


def test_hf_whisper_uses_the_encoder(hf_dirs):
    from transformers import WhisperModel

    adapter = _hf(hf_dirs, "whisper")
    assert type(adapter.tower).__name__ == "WhisperEncoder"
    assert not any(k.startswith("decoder") for k in adapter.state_dict())
    batch = _batch(adapter, WAVS[:3])
    assert batch["input_features"].shape == (3, 16, 100)
    encoder = WhisperModel.from_pretrained(hf_dirs / "whisper").eval().encoder
    with torch.no_grad():
        hidden = encoder(batch["input_features"]).last_hidden_state
        valid = (batch["attention_mask"].sum(1) - 1) // 2 + 1  # conv stride 2
        assert (valid < hidden.shape[1]).all()
        expected = torch.stack([h[:n].mean(0) for h, n in zip(hidden, valid)])
        torch.testing.assert_close(adapter(batch), expected)
        torch.testing.assert_close(_hf(hf_dirs, "whisper", pooling="cls")(batch), hidden[:, 0])


def test_hf_clap_uses_the_audio_model(hf_dirs):
    from transformers import ClapModel

    adapter = _hf(hf_dirs, "clap")
    assert type(adapter.tower).__name__ == "ClapAudioModel" and adapter.feature_dim == 32
    batch = _batch(adapter, WAVS[:2])
    audio_model = ClapModel.from_pretrained(hf_dirs / "clap").eval().audio_model
    with torch.no_grad():
        expected = audio_model(**batch).pooler_output
        torch.testing.assert_close(adapter(batch), expected)  # grid mean == HTSAT's pooler
        torch.testing.assert_close(_hf(hf_dirs, "clap", pooling="pooler")(batch), expected)
        with pytest.raises(ValueError, match="no CLS token"):
            _hf(hf_dirs, "clap", pooling="cls")(batch)


def test_hf_freeze_and_sample_rate_check(hf_dirs):
    frozen = _hf(hf_dirs, "wav2vec2", freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match="16000 Hz"):
        _hf(hf_dirs, "wav2vec2", sample_rate=8000)
