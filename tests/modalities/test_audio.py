"""Audio: decoding (real FSDD recordings, re-encoded with PyAV to FLAC/Opus/MP3/AAC), resampling,
crop/pad policy, log-mel via transformers.audio_utils, SpecAugment, errors that name the file,
and the small AST (shapes, gradients, learns FSDD digits); HF encoders are in test_audio_hf.py."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import soundfile as sf
import torch

from align.errors import SampleError
from align.modalities import build_adapter
from align.modalities.audio_io import crop_or_pad, decode_audio, load_audio
from align.registry import ADAPTERS

FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "audio" / "fsdd" / "recordings"
WAVS = sorted(FSDD.glob("*.wav"))
pytestmark = pytest.mark.skipif(len(WAVS) < 300, reason=f"FSDD recordings not found in {FSDD}")
SR = 8000  # FSDD rate


def int16(path: Path) -> np.ndarray:
    return sf.read(path, dtype="int16")[0]


def encode(x: np.ndarray, sr: int, path: Path, codec: str) -> Path:
    """Encode int16 mono samples with PyAV (FFmpeg)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def aligned_corr(y: np.ndarray, ref: np.ndarray) -> float:
    """Correlation after removing the codec's delay (found by cross-correlation)."""
    lag = int(np.correlate(y, ref, "full").argmax()) - (len(ref) - 1)
    a, b = y[max(lag, 0) :], ref[max(-lag, 0) :]
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def peak_hz(x: np.ndarray, sr: int) -> float:
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.abs(np.fft.rfft(x)).argmax()])


# ---- decoding --------------------------------------------------------------------------------


def test_wav_decodes_to_scaled_float_mono():
    path = WAVS[0]
    wave = load_audio(path, SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    np.testing.assert_array_equal(wave, int16(path) / 32768.0)
    assert np.array_equal(load_audio(str(path), SR), wave)
    assert np.array_equal(load_audio(path.read_bytes(), SR), wave)
    assert np.array_equal(load_audio({"bytes": path.read_bytes(), "path": path.name}, SR), wave)
    assert np.array_equal(load_audio({"bytes": None, "path": str(path)}, SR), wave)
    assert np.array_equal(load_audio({"array": wave, "sampling_rate": SR}, SR), wave)
    assert np.array_equal(load_audio((int16(path), SR), SR), wave)


@pytest.mark.parametrize("ext,codec", [("flac", "flac"), ("ogg", "libopus"), ("mp3", "libmp3lame"), ("m4a", "aac")])
def test_compressed_formats_decode(tmp_path, ext, codec):
    ref_i16 = int16(WAVS[7])
    ref = ref_i16 / 32768.0
    path = encode(ref_i16, SR, tmp_path / f"clip.{ext}", codec)
    data, sr, where = decode_audio(path)
    assert sr == SR and str(path) in where and data.shape[1] == 1
    wave = load_audio(path, SR)
    if ext == "flac":
        np.testing.assert_array_equal(wave, ref)
    else:  # lossy: codec delay / frame padding, never more than a couple of codec frames
        assert len(ref) <= len(wave) <= len(ref) + 2 * 1024 + 64
        assert aligned_corr(wave, ref) > 0.9
    assert np.array_equal(load_audio(path.read_bytes(), SR), wave)
    if ext == "m4a":  # libsndfile cannot open it: load_audio really used the PyAV fallback
        with pytest.raises(sf.LibsndfileError):
            sf.info(path)


def test_stereo_is_mixed_to_mono(tmp_path):
    left = int16(WAVS[1])
    right = (np.sin(np.arange(len(left)) * 0.05) * 8000).astype(np.int16)
    expected = (left / 32768.0 + right / 32768.0) / 2
    stereo = np.stack([left, right], axis=1)  # [frames, channels]
    sf.write(tmp_path / "stereo.wav", stereo, SR)
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", SR), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio((stereo, SR), SR), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio((stereo.T, SR), SR), expected, atol=1e-7)  # [channels, frames]
    np.testing.assert_allclose(load_audio((torch.from_numpy(stereo.T.copy()), SR), SR), expected, atol=1e-7)


def test_resampling_keeps_duration_and_pitch():
    wave = load_audio(WAVS[2], 16000)
    assert abs(len(wave) - 2 * len(int16(WAVS[2]))) <= 1
    t = np.arange(SR) / SR
    up = load_audio((np.sin(2 * np.pi * 440 * t).astype(np.float32), SR), 16000)
    assert len(up) == 16000 and abs(peak_hz(up, 16000) - 440) <= 1
    t16 = np.arange(16000) / 16000
    down = load_audio((np.sin(2 * np.pi * 1000 * t16) + np.sin(2 * np.pi * 6000 * t16), 16000), SR)
    assert len(down) == SR and abs(peak_hz(down, SR) - 1000) <= 1
    spectrum = np.abs(np.fft.rfft(down))  # 6 kHz is above the new Nyquist: filtered, not aliased
    assert spectrum[2000] < 0.01 * spectrum[1000]


def test_int_pcm_is_scaled():
    cases = {np.int16: [-32768, 16384, 0], np.int32: [-(2**31), 2**30, 0], np.uint8: [0, 192, 128]}
    for dtype, values in cases.items():
        wave = load_audio((np.array(values, dtype=dtype), SR), SR)
        np.testing.assert_allclose(wave, [-1.0, 0.5, 0.0])
    floats = np.array([0.25, -2.0, 0.0], np.float64)  # floats are taken as they are
    np.testing.assert_allclose(load_audio((floats, SR), SR), floats)


# ---- crop / pad policy -----------------------------------------------------------------------


def test_eval_takes_the_centre_deterministically():
    wave = np.arange(100, dtype=np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(crop_or_pad(wave, 40, train=False), wave[30:70])


def test_training_crops_are_random_windows_reproducible_by_seed():
    wave = np.arange(100, dtype=np.float32)
    starts = set()
    for seed in range(20):
        np.random.seed(seed)
        crop = crop_or_pad(wave, 40, train=True)
        np.random.seed(seed)
        assert np.array_equal(crop_or_pad(wave, 40, train=True), crop)
        assert len(crop) == 40 and np.array_equal(crop, wave[int(crop[0]) : int(crop[0]) + 40])
        starts.add(int(crop[0]))
    assert len(starts) > 5
    gen = np.random.default_rng(0)
    assert len({int(crop_or_pad(wave, 40, True, rng=gen)[0]) for _ in range(20)}) > 5


def test_short_clips_are_zero_padded():
    wave = np.ones(30, np.float32)
    for train in (False, True):
        out = crop_or_pad(wave, 50, train=train)
        assert len(out) == 50 and out[:30].all() and not out[30:].any()
    centred = crop_or_pad(wave, 50, train=False, pad="center")
    assert not centred[:10].any() and centred[10:40].all() and not centred[40:].any()
    assert np.array_equal(crop_or_pad(wave, 30, train=True), wave)


# ---- log-mel + SpecAugment -------------------------------------------------------------------


@pytest.mark.parametrize("sr", [8000, 16000])
def test_log_mel_is_transformers_spectrogram(sr):
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    adapter = build_adapter("audio", {"sample_rate": sr, "n_mels": 40, "width": 32, "heads": 2, "layers": 1})
    spec = adapter.preprocessor()(WAVS[3], train=False)
    win, hop = sr // 40, sr // 100  # 25 ms / 10 ms
    assert spec.shape == (40, 1 + sr // hop) and spec.dtype == torch.float32

    wave = np.zeros(sr, np.float32)
    clip = load_audio(WAVS[3], sr)[:sr]
    wave[: len(clip)] = clip
    n_fft = 1 << (win - 1).bit_length()
    ref = spectrogram(
        wave,
        window_function(win, "hann"),
        win,
        hop,
        n_fft,
        power=2.0,
        log_mel="dB",
        mel_filters=mel_filter_bank(n_fft // 2 + 1, 40, 20.0, sr / 2, sr, mel_scale="htk"),
        mel_floor=1e-10,
        min_value=1e-10,
        db_range=80.0,
    )
    ref = (ref - ref.mean()) / (ref.std() + 1e-5)
    np.testing.assert_allclose(spec.numpy(), ref, atol=1e-4)
    assert abs(float(spec.mean())) < 1e-4 and abs(float(spec.std()) - 1) < 1e-3


def test_spec_augment_masks_only_in_training():
    opts = {
        "sample_rate": SR,
        "n_mels": 32,
        "freq_mask": 8,
        "time_mask": 20,
        "num_masks": 2,
        "width": 32,
        "heads": 2,
        "layers": 1,
    }
    pre = build_adapter("audio", opts).preprocessor()
    plain = build_adapter("audio", {**opts, "freq_mask": 0, "time_mask": 0}).preprocessor()
    path = min(WAVS[:50], key=lambda p: sf.info(p).frames)  # shorter than the clip: no random crop
    ref = plain(path, train=False)
    assert torch.equal(pre(path, train=False), ref)
    assert torch.equal(plain(path, train=True), ref)
    masked_any = 0
    for seed in range(5):
        np.random.seed(seed)
        aug = pre(path, train=True)
        changed = aug != ref
        assert (aug[changed] == 0).all()
        rows, cols = (aug == 0).all(1), (aug == 0).all(0)
        assert (rows[:, None] | cols[None, :])[changed].all()  # whole bands / spans only
        assert rows.sum() <= 16 and cols.sum() <= 40
        masked_any += bool(changed.any())
    assert masked_any >= 4


# ---- errors name the sample ------------------------------------------------------------------


def _raises_naming(raw, name: str, match: str | None = None, **kw):
    with pytest.raises(SampleError, match=match) as info:
        load_audio(raw, SR, **kw)
    assert name in str(info.value)
    return str(info.value)


def test_bad_files_raise_sample_error_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    _raises_naming(corrupt, "corrupt.wav", "cannot decode")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(WAVS[0].read_bytes()[:100])
    _raises_naming(truncated, "truncated.wav", "truncated")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    _raises_naming(empty, "empty.wav", "zero-length")
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, np.int16), SR)
    _raises_naming(no_frames, "no_frames.wav", "zero-length")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(800, np.int16), SR)
    _raises_naming(silent, "silent.wav", "silent")
    assert len(load_audio(silent, SR, silence_threshold=None)) == 800
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 100, np.float32), SR, subtype="FLOAT")
    _raises_naming(nan, "nan.wav", "NaN")
    _raises_naming(tmp_path / "missing.wav", "missing.wav", "no such file")
    _raises_naming({"bytes": truncated.read_bytes(), "path": "clip_7.wav"}, "clip_7.wav", "truncated")


@pytest.mark.parametrize(
    "raw",
    [
        5,
        None,
        np.zeros(10),
        (np.zeros((2, 2, 2)), SR),
        (np.ones(10), 0),
        (np.ones(10, bool), SR),
        ([0.1, np.inf], SR),
        {"x": 1},
    ],
)
def test_unsupported_or_bad_arrays_raise(raw):
    with pytest.raises(SampleError):
        load_audio(raw, SR)


def test_preprocessor_raises_sample_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(SampleError, match="bad.wav"):
        build_adapter("audio", {"sample_rate": SR}).preprocessor()(bad, train=True)


# ---- small AST trained from scratch ----------------------------------------------------------

TINY_AST = {
    "sample_rate": SR,
    "clip_seconds": 0.8,
    "n_mels": 32,
    "patch_size": 8,
    "patch_stride": 8,
    "width": 64,
    "layers": 2,
    "heads": 4,
}


def test_registered_with_working_defaults():
    assert ADAPTERS.get("audio").__name__ == "AudioAdapter"
    adapter = build_adapter("audio").eval()  # 16 kHz, 1 s, 64 mels, AST width 192
    pre = adapter.preprocessor()
    item = pre(WAVS[0], train=False)
    assert item.shape == (64, 101) and adapter.feature_dim == 192
    with torch.no_grad():
        assert adapter(pre.collate([item, item])).shape == (2, 192)
    assert torch.equal(pickle.loads(pickle.dumps(pre))(WAVS[0], train=False), item)  # for workers


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_ast_forward_shapes_gradients_and_batching(pooling):
    torch.manual_seed(0)
    adapter = build_adapter("audio", {**TINY_AST, "pooling": pooling})
    pre = adapter.preprocessor()
    batch = pre.collate([pre(p, train=True) for p in WAVS[:4]])
    assert batch.shape == (4, 32, 81)
    out = adapter(batch)
    assert out.shape == (4, 64) and adapter.feature_dim == 64
    out.pow(2).sum().backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert adapter.tower.patch.weight.grad.abs().sum() > 0 and adapter.tower.pos.grad.abs().sum() > 0
    adapter.eval()
    with torch.no_grad():  # vectorised over the batch: same as one at a time
        torch.testing.assert_close(adapter(batch), torch.cat([adapter(b[None]) for b in batch]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n_mels, frames"):
        adapter(batch[:, :, :40])


def test_ast_learns_fsdd_digits():
    """AST + linear head on 300 real recordings: the loss has to fall well below chance."""
    rng = np.random.default_rng(0)
    files = [WAVS[i] for i in rng.choice(len(WAVS), 300, replace=False)]
    labels = torch.tensor([int(p.name.split("_")[0]) for p in files])
    torch.manual_seed(0)
    adapter = build_adapter("audio", {**TINY_AST, "pooling": "mean"})
    pre = adapter.preprocessor()
    x = pre.collate([pre(p, train=False) for p in files])
    head = torch.nn.Linear(adapter.feature_dim, 10)
    opt = torch.optim.AdamW([*adapter.parameters(), *head.parameters()], lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(120):
        idx = torch.randint(0, len(files), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(head(adapter(x[idx])), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert first > 2.0 and last < 0.75 * first, (first, last)


def test_options_are_validated():
    from pydantic import ValidationError

    cases = [
        ({"encoder": "hf"}, "needs 'hf_model'"),
        ({"hf_model": "x"}, "needs encoder: hf"),
        ({"encoder": "hf", "hf_model": "x", "n_mels": 80}, "only apply to encoder 'ast'"),
        ({"pooling": "pooler"}, "only for encoder 'hf'"),
        ({"width": 30, "heads": 4}, "divisible"),
        ({"clip_seconds": 0.1, "patch_size": 16}, "smaller than patch_size"),
        ({"win_length": 600, "n_fft": 512}, "win_length"),
        ({"n_mel": 64}, "n_mel"),
    ]
    for options, match in cases:
        with pytest.raises(ValidationError, match=match):
            build_adapter("audio", options)


def test_hf_options_survive_the_config_round_trip():
    """align/config/schema.py stores every option of a validated adapter (defaults included) and validates
    them again when the model is built or reloaded: an 'hf' config must pass twice."""
    from pydantic import ValidationError

    from align.config.schema import config_from_dict
    from align.modalities.audio import AudioOptions

    cfg = config_from_dict(
        {
            "model": {
                "modalities": {
                    "audio": {"options": {"encoder": "hf", "hf_model": "x"}},
                    "text": {"options": {"hf_model": "y"}},
                }
            },
            "data": {"train": {"source": "csv", "columns": {"audio": "a", "text": "t"}}},
        }
    )
    stored = cfg.model.modalities["audio"].options
    assert AudioOptions.model_validate(stored).encoder == "hf"
    # the 'hf' variant stores only its own options; a config dumped before the variants were split
    # carried the 'ast' options at their defaults and must still load (a changed one must not)
    assert "n_mels" not in stored and "hf_model" in stored
    assert AudioOptions.model_validate({**stored, "n_mels": 64, "top_db": 80.0}).encoder == "hf"
    with pytest.raises(ValidationError, match="n_mels"):
        AudioOptions.model_validate({**stored, "n_mels": 80})
