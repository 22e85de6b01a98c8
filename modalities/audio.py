"""Audio adapter: a small AST (Audio Spectrogram Transformer) over log-mel patches, trainable from
scratch on CPU, or any HF transformers audio encoder by hub id / local folder.

Raw samples are decoded by ``align.modalities.audio_io.load_audio`` (paths, bytes, HF ``Audio`` dicts,
``(array, sample_rate)``), mixed to mono and resampled; clips longer than ``clip_seconds`` are
cropped (random in training, centre in evaluation).

encoder "ast": the clip is zero-padded to exactly ``clip_seconds`` and turned into a log-mel
  spectrogram with ``transformers.audio_utils`` (HTK mel scale, 20 Hz .. Nyquist, Hann window,
  power in dB, clamped to ``top_db`` below the clip's peak so the zero padding does not dominate).
  It is then normalised: per utterance to mean 0 / std 1 by default (no dataset statistics
  needed), or with fixed ``norm_stats=(mean, std)`` in dB, like AST's dataset statistics.
  SpecAugment (``freq_mask`` / ``time_mask``, ``num_masks`` of each, masked to 0 = the normalised
  mean) runs in the preprocessor, in training only, drawing from ``np.random`` (seeded per sample
  by the data pipeline). Each sample is a [n_mels, frames] tensor.
encoder "hf": the (cropped, not padded) waveform at the feature extractor's own ``sampling_rate``
  goes through ``AutoFeatureExtractor`` (which pads to its fixed size where it has one, e.g.
  Whisper's 30 s); collate pads any remaining length differences with zeros (mask 0). Features
  are pooled from ``last_hidden_state`` (``mean`` over valid frames where an attention mask is
  given, ``cls`` = first token; a CLAP-style [B, C, H, W] grid is averaged) or taken from
  ``pooler_output``. Encoder-decoder models (Whisper) use their encoder; dual models with an
  ``audio_model`` (CLAP) use that.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from align.errors import SampleError
from align.modalities.audio_io import DEFAULT_SILENCE_THRESHOLD, crop_or_pad, load_audio
from align.modalities.base import AdapterOptions, EncoderVariants, ModalityAdapter, Preprocessor, resolve_model_path
from align.modalities.layers import ClsTransformer, freeze_, masked_mean
from align.registry import ADAPTERS

MEL_FMIN = 20.0
FIT_CLIPS = 5000  # most training clips read to fit norm_stats


class _AudioCommon(AdapterOptions):
    """Options both encoder variants read."""

    sample_rate: int = Field(16000, gt=0, description="'ast' only; 'hf' uses its feature extractor's rate")
    clip_seconds: float = Field(1.0, gt=0, description="crop (and for 'ast' pad) every clip to this")
    silence_threshold: float | None = Field(
        DEFAULT_SILENCE_THRESHOLD, ge=0, description="peak |x| below this is an error; None disables"
    )
    freeze: bool = False

    def clip_samples(self, sample_rate: int | None = None) -> int:
        return max(1, round(self.clip_seconds * (sample_rate or self.sample_rate)))


class ASTAudioOptions(_AudioCommon):
    """encoder "ast": log-mel front end + AST trunk trained from scratch."""

    encoder: Literal["ast"] = "ast"
    pad: Literal["end", "center"] = Field("end", description="where the zero padding goes")
    # log-mel front end
    n_mels: int = Field(64, gt=0)
    n_fft: int | None = Field(None, gt=0, description="default: next power of two >= win_length")
    win_length: int | None = Field(None, gt=0, description="default: 25 ms")
    hop_length: int | None = Field(None, gt=0, description="default: 10 ms")
    top_db: float | None = Field(80.0, gt=0, description="log-mel dynamic range below the clip's peak")
    norm_stats: tuple[float, float] | Literal["fit"] | None = Field(
        None,
        description="fixed (mean, std) of the log-mel in dB; 'fit' = measured on the training "
        "clips before training (AST's dataset statistics, stored in the run's config); None = "
        "per-utterance normalisation",
    )
    freq_mask: int = Field(0, ge=0, description="SpecAugment: max mel bins per mask (0 = off)")
    time_mask: int = Field(0, ge=0, description="SpecAugment: max frames per mask (0 = off)")
    num_masks: int = Field(2, ge=0, description="SpecAugment: masks of each kind")
    # AST trunk
    patch_size: int = Field(16, gt=0)
    patch_stride: int = Field(10, gt=0, description="< patch_size gives AST's overlapping patches")
    width: int = Field(192, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    pooling: Literal["mean", "cls", "pooler"] = "mean"

    @model_validator(mode="after")
    def _consistent(self) -> "ASTAudioOptions":
        if self.pooling == "pooler":
            raise ValueError("pooling 'pooler' is only for encoder 'hf'; use 'cls' or 'mean'")
        if isinstance(self.norm_stats, tuple) and self.norm_stats[1] <= 0:
            raise ValueError(f"norm_stats std must be > 0, got {self.norm_stats[1]}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.stft()["win_length"] > self.stft()["n_fft"]:
            raise ValueError(f"win_length {self.stft()['win_length']} > n_fft {self.stft()['n_fft']}")
        if min(self.n_mels, self.frames()) < self.patch_size:
            raise ValueError(
                f"log-mel [{self.n_mels} x {self.frames()}] is smaller than patch_size "
                f"{self.patch_size}; raise n_mels / clip_seconds or lower patch_size"
            )
        return self

    def stft(self) -> dict[str, int]:
        """Window/hop/FFT sizes in samples, defaulting to 25 ms / 10 ms like AST and Whisper."""
        win = self.win_length or round(0.025 * self.sample_rate)
        hop = self.hop_length or round(0.010 * self.sample_rate)
        n_fft = self.n_fft or 1 << (win - 1).bit_length()
        return {"win_length": win, "hop_length": hop, "n_fft": n_fft}

    def frames(self) -> int:
        """Frames of a centred (reflect-padded by win//2) spectrogram of one clip."""
        s = self.stft()
        return 1 + (self.clip_samples() + 2 * (s["win_length"] // 2) - s["win_length"]) // s["hop_length"]


class HFAudioOptions(_AudioCommon):
    """encoder "hf": a transformers audio encoder and its own feature extractor."""

    encoder: Literal["hf"] = "hf"
    hf_model: str | None = Field(
        None, description="transformers audio model: hub id, local folder or package:<module>/<folder>"
    )
    pooling: Literal["mean", "cls", "pooler"] = "mean"

    @model_validator(mode="after")
    def _consistent(self) -> "HFAudioOptions":
        if self.hf_model is None:
            raise ValueError("encoder 'hf' needs 'hf_model'")
        return self


AudioOptions = EncoderVariants("ast", ast=ASTAudioOptions, hf=HFAudioOptions)


# ------------------------------------------------------------------------------------------------
# preprocessing (DataLoader workers)
# ------------------------------------------------------------------------------------------------


class LogMel:
    """Normalised log-mel spectrogram of one waveform via ``transformers.audio_utils``."""

    def __init__(self, o: ASTAudioOptions) -> None:
        from transformers.audio_utils import mel_filter_bank, window_function

        self.stft = o.stft()
        self.window = window_function(self.stft["win_length"], "hann")
        self.mel_filters = mel_filter_bank(
            self.stft["n_fft"] // 2 + 1,
            o.n_mels,
            MEL_FMIN,
            o.sample_rate / 2,
            o.sample_rate,
            norm=None,
            mel_scale="htk",
        )
        if o.norm_stats == "fit":
            raise ValueError(
                "norm_stats 'fit' is measured on the training clips by AudioAdapter.fit "
                "(align train runs it); give (mean, std) to build the adapter directly"
            )
        self.norm_stats = o.norm_stats
        self.top_db = o.top_db

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """Un-normalised mel power in dB, at most ``top_db`` below the clip's peak, [n_mels, frames]."""
        from transformers.audio_utils import spectrogram

        return spectrogram(
            wave,
            self.window,
            frame_length=self.stft["win_length"],
            hop_length=self.stft["hop_length"],
            fft_length=self.stft["n_fft"],
            power=2.0,
            mel_filters=self.mel_filters,
            mel_floor=1e-10,
            log_mel="dB",
            min_value=1e-10,
            db_range=self.top_db,
        )

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        spec = self.log_mel(wave)
        mean, std = self.norm_stats or (spec.mean(), spec.std())
        return ((spec - mean) / (std + 1e-5)).astype(np.float32)


def spec_augment(spec: np.ndarray, freq_mask: int, time_mask: int, num_masks: int) -> np.ndarray:
    """SpecAugment (Park et al. 2019) without time warping: ``num_masks`` frequency bands of width
    0..freq_mask and time spans of width 0..time_mask set to 0; a copy, drawn from ``np.random``."""
    spec = spec.copy()
    for axis, max_width in ((0, freq_mask), (1, time_mask)):
        size = spec.shape[axis]
        for _ in range(num_masks if max_width else 0):
            width = np.random.randint(0, min(max_width, size) + 1)
            start = np.random.randint(0, size - width + 1)
            index = [slice(None), slice(None)]
            index[axis] = slice(start, start + width)
            spec[tuple(index)] = 0.0
    return spec


class LogMelPreprocessor(Preprocessor):
    """raw -> waveform -> crop/pad to clip -> normalised log-mel (+ SpecAugment in training)."""

    def __init__(self, o: ASTAudioOptions) -> None:
        self.o = o
        self.logmel = LogMel(o)

    def waveform(self, raw: Any, train: bool) -> np.ndarray:
        wave = load_audio(raw, self.o.sample_rate, silence_threshold=self.o.silence_threshold)
        return crop_or_pad(wave, self.o.clip_samples(), train, pad=self.o.pad)

    def __call__(self, raw: Any, *, train: bool) -> torch.Tensor:
        spec = self.logmel(self.waveform(raw, train))
        if train and (self.o.freq_mask or self.o.time_mask):
            spec = spec_augment(spec, self.o.freq_mask, self.o.time_mask, self.o.num_masks)
        return torch.from_numpy(spec)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)


class HFAudioPreprocessor(Preprocessor):
    """raw -> waveform at the extractor's rate -> crop to clip -> the extractor's tensors."""

    def __init__(self, feature_extractor, o: HFAudioOptions) -> None:
        self.fe = feature_extractor
        self.o = o
        self.sample_rate = int(feature_extractor.sampling_rate)
        params = inspect.signature(feature_extractor.__call__).parameters
        self.extra = {"return_attention_mask": True} if "return_attention_mask" in params else {}

    def __call__(self, raw: Any, *, train: bool) -> dict[str, torch.Tensor]:
        wave = load_audio(raw, self.sample_rate, silence_threshold=self.o.silence_threshold)
        n = self.o.clip_samples(self.sample_rate)
        if len(wave) > n:
            wave = crop_or_pad(wave, n, train)
        enc = self.fe(wave, sampling_rate=self.sample_rate, return_tensors="pt", **self.extra)
        return {k: v[0] for k, v in enc.items() if isinstance(v, torch.Tensor)}

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: pad_stack([it[k] for it in items]) for k in items[0]}


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack, zero-padding every axis to the largest size (variable-length extractor outputs)."""
    shape = tuple(max(sizes) for sizes in zip(*(t.shape for t in tensors)))
    if all(t.shape == shape for t in tensors):
        return torch.stack(tensors)
    out = tensors[0].new_zeros((len(tensors), *shape))
    for i, t in enumerate(tensors):
        out[(i, *(slice(0, n) for n in t.shape))] = t
    return out


# ------------------------------------------------------------------------------------------------
# encoders
# ------------------------------------------------------------------------------------------------


class ASTEncoder(ClsTransformer):
    """AST (Gong et al. 2021) from scratch: conv patches over the log-mel image, then the shared
    CLS-token trunk (learned positions, pre-norm transformer, final LayerNorm, CLS or mean pooling)."""

    def __init__(self, o: ASTAudioOptions) -> None:
        input_shape = (o.n_mels, o.frames())
        grid = [(n - o.patch_size) // o.patch_stride + 1 for n in input_shape]
        super().__init__(
            {"patch": nn.Conv2d(1, o.width, o.patch_size, o.patch_stride)},
            width=o.width,
            heads=o.heads,
            mlp_ratio=o.mlp_ratio,
            dropout=o.dropout,
            layers=o.layers,
            token_positions=grid[0] * grid[1],
            pooling=o.pooling,
        )
        self.input_shape = input_shape

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.ndim != 3 or tuple(spec.shape[1:]) != self.input_shape:
            raise ValueError(
                f"audio batch must be [B, n_mels, frames] = [B, {self.input_shape[0]}, "
                f"{self.input_shape[1]}], got {tuple(spec.shape)}"
            )
        return self.encode(self.patch(spec.unsqueeze(1)).flatten(2).transpose(1, 2))


def load_hf_audio_tower(name: str) -> nn.Module:
    """The audio-encoding part of a transformers model: CLAP-like ``audio_model``, the encoder of
    an encoder-decoder (Whisper), else the model itself. Other parts are dropped."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve_model_path(name))
    if isinstance(getattr(model, "audio_model", None), nn.Module):
        return model.audio_model
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model


def hf_feature_dim(tower: nn.Module) -> int:
    cfg = tower.config
    cfg = getattr(cfg, "audio_config", None) or cfg
    dim = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if dim is None:
        raise ValueError(
            f"cannot tell the feature width of {type(tower).__name__}: its config has "
            "neither 'hidden_size' nor 'd_model'"
        )
    return int(dim)


@ADAPTERS.register("audio")
class AudioAdapter(ModalityAdapter):
    """preprocess: decode, resample, crop (+ log-mel, SpecAugment) -> trunk: AST or HF encoder."""

    Options = AudioOptions

    def __init__(self, options: ASTAudioOptions | HFAudioOptions) -> None:
        super().__init__(options)
        if options.encoder == "hf":
            from transformers import AutoFeatureExtractor

            self.tower = load_hf_audio_tower(options.hf_model)
            self.feature_extractor = AutoFeatureExtractor.from_pretrained(resolve_model_path(options.hf_model))
            fe_rate = int(self.feature_extractor.sampling_rate)
            default_rate = type(options).model_fields["sample_rate"].default  # not model_fields_set: see above
            if options.sample_rate not in (default_rate, fe_rate):
                raise ValueError(
                    f"sample_rate {options.sample_rate} differs from {options.hf_model}'s "
                    f"feature extractor ({fe_rate} Hz); leave it out for encoder 'hf'"
                )
            self.feature_dim = hf_feature_dim(self.tower)
            self._inputs = set(inspect.signature(self.tower.forward).parameters)
        else:
            self.tower = ASTEncoder(options)
            self.feature_dim = options.width
        if options.freeze:
            freeze_(self.tower)

    @classmethod
    def fit(cls, options, values: list[Any]) -> dict[str, Any]:
        """``norm_stats: fit``: mean and std of the un-normalised log-mel (dB) over the training clips,
        each centre-cropped / padded as in evaluation, like AST's dataset statistics. At most
        ``FIT_CLIPS`` clips are read (a seeded choice), so fitting a large set stays bounded."""
        o = options if isinstance(options, (ASTAudioOptions, HFAudioOptions)) else AudioOptions.model_validate(options)
        if o.encoder != "ast" or o.norm_stats != "fit":
            return {}
        logmel = LogMel(o.model_copy(update={"norm_stats": None}))
        pick = np.arange(len(values))
        if len(pick) > FIT_CLIPS:
            pick = np.sort(np.random.default_rng(0).choice(len(values), FIT_CLIPS, replace=False))
        total, total_sq, count = 0.0, 0.0, 0
        for i in pick:
            try:
                wave = load_audio(values[i], o.sample_rate, silence_threshold=o.silence_threshold)
            except (SampleError, ValueError, OSError, RuntimeError) as err:
                raise ValueError(f"audio fit (norm_stats: fit), training row {i}: {err}") from err
            spec = logmel.log_mel(crop_or_pad(wave, o.clip_samples(), False, pad=o.pad)).astype(np.float64)
            total, total_sq, count = total + spec.sum(), total_sq + np.square(spec).sum(), count + spec.size
        if not count:
            raise ValueError("audio fit (norm_stats: fit): the training column has no clips")
        mean = total / count
        return {"norm_stats": [float(mean), float(np.sqrt(max(total_sq / count - mean**2, 1e-12)))]}

    def preprocessor(self) -> Preprocessor:
        if self.options.encoder == "hf":
            return HFAudioPreprocessor(self.feature_extractor, self.options)
        return LogMelPreprocessor(self.options)

    def forward(self, batch) -> torch.Tensor:
        if self.options.encoder == "ast":
            return self.tower(batch)
        out = self.tower(**{k: v for k, v in batch.items() if k in self._inputs})
        if self.options.pooling == "pooler":
            return out.pooler_output
        return self.pool(out.last_hidden_state, batch.get("attention_mask"))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if hidden.ndim == 4:  # channels-first grid (CLAP's HTSAT): no CLS token, average the grid
            if self.options.pooling == "cls":
                raise ValueError(f"{type(self.tower).__name__} has no CLS token; use pooling mean or pooler")
            return hidden.flatten(2).mean(-1)
        if self.options.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        return masked_mean(hidden, self.hidden_mask(mask, hidden.shape[1]))

    def hidden_mask(self, mask: torch.Tensor, length: int) -> torch.Tensor:
        """An input-level mask (samples or spectrogram frames) -> a mask over encoder positions,
        via the model's own output-length rule where it has one, else proportionally."""
        if mask.shape[1] == length:
            return mask
        valid = mask.sum(-1)
        if hasattr(self.tower, "_get_feat_extract_output_lengths"):
            valid = self.tower._get_feat_extract_output_lengths(valid)
        else:
            valid = torch.ceil(valid * length / mask.shape[1])
        return torch.arange(length, device=mask.device)[None, :] < valid[:, None]
