"""Audio decoding shared by audio adapters: any raw sample -> float32 mono waveform at one rate.

Raw samples may be
  * a file path (str / Path): WAV, FLAC, OGG (Vorbis/Opus), MP3 (libsndfile >= 1.1), ... via
    ``soundfile``; anything libsndfile cannot read (M4A/AAC, older MP3, video containers, ...)
    via PyAV (FFmpeg);
  * raw encoded bytes (same decoders);
  * a HF datasets ``Audio`` dict: undecoded ``{"bytes": ..., "path": ...}`` or decoded
    ``{"array": ..., "sampling_rate": ...}``;
  * an ``(array, sample_rate)`` tuple.
Arrays are 1-D (mono) or 2-D, where the shorter axis is taken as the channel axis. Integer PCM
is scaled to [-1, 1]; channels are mixed down by their mean; the rate is changed with
``scipy.signal.resample_poly`` (polyphase, anti-aliased).

Fixed-length policy (``crop_or_pad``), so every sample of a batch has the same shape:
  * longer than ``n`` samples: training takes a uniformly random window, drawn from ``np.random``
    (the data pipeline seeds it per sample, so crops are reproducible); evaluation takes the
    centre window, so it is deterministic;
  * shorter: zero-padded to ``n``, at the end (``pad="end"``, the default: the clip starts at
    t=0) or equally on both sides (``pad="center"``).

Every failure is a ``SampleError`` whose message names the sample ("audio file PATH",
"audio bytes [from PATH]" or "audio array"): unreadable, corrupt or truncated files, zero-length,
silent (peak below ``silence_threshold``) or non-finite audio, unsupported types.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from align.errors import SampleError

DEFAULT_SILENCE_THRESHOLD = 1e-4


def load_audio(raw: Any, target_sr: int, *, silence_threshold: float | None = DEFAULT_SILENCE_THRESHOLD) -> np.ndarray:
    """Decode, check, mix to mono and resample one raw audio sample -> float32 ``[samples]``."""
    data, sr, where = decode_audio(raw)
    return prepare_waveform(data, sr, target_sr, where, silence_threshold)


def prepare_waveform(
    data: np.ndarray, sr: int, target_sr: int, where: str, silence_threshold: float | None = DEFAULT_SILENCE_THRESHOLD
) -> np.ndarray:
    """Checks before resampling, so errors describe the audio as it came in."""
    if data.size == 0:
        raise SampleError(f"{where}: zero-length audio")
    if not np.isfinite(data).all():
        raise SampleError(f"{where}: audio contains NaN or infinite samples")
    wave = data.mean(axis=1) if data.ndim == 2 else data
    peak = float(np.abs(wave).max())
    if silence_threshold is not None and peak < silence_threshold:
        raise SampleError(f"{where}: silent audio (peak |x| {peak:.3g} < silence_threshold {silence_threshold:g})")
    return resample(wave, sr, target_sr)


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio target_sr/sr (identity when equal)."""
    if sr == target_sr:
        return np.ascontiguousarray(wave, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr), int(target_sr))
    return resample_poly(wave, int(target_sr) // g, int(sr) // g).astype(np.float32)


def crop_or_pad(
    wave: np.ndarray, n: int, train: bool, rng: np.random.Generator | None = None, pad: Literal["end", "center"] = "end"
) -> np.ndarray:
    """Exactly ``n`` samples (policy in the module docstring). ``rng`` defaults to ``np.random``."""
    length = len(wave)
    if length > n:
        if train:
            start = (
                int(rng.integers(0, length - n + 1)) if rng is not None else int(np.random.randint(0, length - n + 1))
            )
        else:
            start = (length - n) // 2
        return wave[start : start + n]
    if length < n:
        before = (n - length) // 2 if pad == "center" else 0
        return np.pad(wave, (before, n - length - before))
    return wave


# ------------------------------------------------------------------------------------------------
# decoding: raw sample -> (float32 [frames, channels] or [frames], sample rate, description)
# ------------------------------------------------------------------------------------------------


def decode_audio(raw: Any) -> tuple[np.ndarray, int, str]:
    """Dispatch on the raw sample's type; returns float32 samples, their rate and a description."""
    if isinstance(raw, dict):
        return _decode_dict(raw)
    if isinstance(raw, (str, Path)):
        return (*decode_file(Path(raw)), f"audio file {raw}")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return (*decode_bytes(bytes(raw), "audio bytes"), "audio bytes")
    if isinstance(raw, tuple) and len(raw) == 2:
        return (*array_samples(raw[0], raw[1]), "audio array")
    raise SampleError(
        f"cannot read audio from {type(raw).__name__}; expected a path, bytes, "
        "an HF Audio dict or an (array, sample_rate) tuple"
    )


def _decode_dict(raw: dict) -> tuple[np.ndarray, int, str]:
    if raw.get("array") is not None:
        return (*array_samples(raw["array"], raw.get("sampling_rate")), "audio array")
    if raw.get("bytes") is not None:
        where = f"audio bytes from {raw['path']}" if raw.get("path") else "audio bytes"
        return (*decode_bytes(bytes(raw["bytes"]), where), where)
    if raw.get("path"):
        return (*decode_file(Path(raw["path"])), f"audio file {raw['path']}")
    raise SampleError("audio dict has none of 'array', 'bytes' or 'path'")


def array_samples(array: Any, sr: Any) -> tuple[np.ndarray, int]:
    """An in-memory array + rate -> float32 [frames] or [frames, channels]."""
    if sr is None or isinstance(sr, bool) or not isinstance(sr, (int, np.integer, float)) or sr <= 0 or int(sr) != sr:
        raise SampleError(f"audio array: sample rate must be a positive integer, got {sr!r}")
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()
    data = np.asarray(array)
    if data.ndim not in (1, 2):
        raise SampleError(f"audio array: expected 1-D or 2-D samples, got shape {data.shape}")
    if data.ndim == 2 and data.shape[0] < data.shape[1]:
        data = data.T  # [channels, frames] -> [frames, channels]
    return pcm_to_float(data, "audio array"), int(sr)


def pcm_to_float(data: np.ndarray, where: str) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1] (full scale = 2**(bits-1)); floats are kept as they are."""
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32, copy=False)
    if data.dtype == np.uint8:  # 8-bit WAV convention: unsigned, centred on 128
        return (data.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.signedinteger):
        return (data.astype(np.float64) / -float(np.iinfo(data.dtype).min)).astype(np.float32)
    raise SampleError(f"{where}: unsupported sample type {data.dtype}")


def decode_file(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise SampleError(f"audio file {path}: no such file")
    if path.stat().st_size == 0:
        raise SampleError(f"audio file {path}: zero-length audio (empty file)")
    return _decode(str(path), lambda: str(path), f"audio file {path}")


def decode_bytes(data: bytes, where: str) -> tuple[np.ndarray, int]:
    if not data:
        raise SampleError(f"{where}: zero-length audio (no bytes)")
    return _decode(io.BytesIO(data), lambda: io.BytesIO(data), where)


def _decode(src, reopen, where: str) -> tuple[np.ndarray, int]:
    """soundfile first (fast, exact for WAV/FLAC/OGG), then PyAV for what libsndfile cannot open.
    A truncated file is an error, not a short clip."""
    import soundfile as sf

    try:
        return _read_soundfile(src, where)
    except SampleError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        sf_error = err
    try:
        return _read_av(reopen())
    except SampleError as err:
        raise SampleError(f"{where}: cannot decode audio (soundfile: {sf_error}; av: {err})") from None
    except Exception as err:  # FFmpeg raises many OSError/ValueError subclasses
        raise SampleError(
            f"{where}: cannot decode audio (soundfile: {sf_error}; av: {type(err).__name__}: {err})"
        ) from None


def _read_soundfile(src, where: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(src) as f:
        expected = f.frames
        data = f.read(dtype="float32", always_2d=True)
        log = f.extra_info
        rate = int(f.samplerate)
    if len(data) < expected or _header_says_truncated(log):
        raise SampleError(f"{where}: truncated audio file (decoded {len(data)} frames; the header promises more)")
    return data, rate


def _header_says_truncated(log: str) -> bool:
    """libsndfile clamps a WAV/AIFF whose data chunk runs past the end of the file and logs
    'data : N (should be M)'; we treat that as a truncated (partly downloaded/written) file."""
    return any(line.strip().lower().startswith(("data", "ssnd")) and "should be" in line for line in log.splitlines())


def _read_av(src) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with FFmpeg, converted to planar float, layout kept."""
    import av

    with av.open(src, mode="r") as container:
        if not container.streams.audio:
            raise SampleError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        chunks = []
        for frame in container.decode(stream):
            chunks += [out.to_ndarray() for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    if not chunks:
        return np.zeros((0, 1), np.float32), rate
    if rate <= 0:
        raise SampleError("stream has no sample rate")
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), rate
