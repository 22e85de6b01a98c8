"""Video decoding with PyAV: pick T frame indices, decode only up to the last one, return RGB.

Raw samples may be a file path (mp4, avi, webm, mkv, anything FFmpeg demuxes), raw bytes, a HF
``{"path", "bytes"}`` dict, or frames already decoded: a uint8 array (or nested lists, as a HF
``Array3D``/``Array4D`` column gives them) of shape ``[T, H, W]`` or ``[T, H, W, C]``.

Which frames (``FrameSampler``):

* The candidate grid is every source frame, resampled to ``fps`` when given (frame k of the
  resampled clip is the source frame shown at time k / fps), then every ``stride``-th of those.
  Decoded arrays carry no frame rate, so ``fps`` does not apply to them (``stride`` does).
* ``uniform``: T grid positions evenly spaced from the first to the last (``linspace``), the same
  in training and evaluation.
* ``segment`` (TSN): the grid is cut into T equal segments; training takes a random frame of
  each (torch's global RNG, which the training dataset seeds per sample), evaluation the middle.
* Short clips (fewer grid frames than T) are stretched, never padded: the same formulas repeat
  indices, so every frame appears, in time order, about T / n times. The output always has
  exactly T frames and motion keeps its direction (looping would jump back to the start).

How: frames are decoded in order and only the wanted ones are converted to RGB; decoding stops
after the last wanted frame. There is no timestamp seeking: timestamps cannot be trusted to give
frame indices (AVI with packed MPEG-4 B-frames returns out-of-order pts) and for short clips the
GOP is often most of the clip anyway. The frame count comes from the container header, or from
counting packets (no decoding) where the header has none (webm, mkv). If the stream ends a little
early (up to 2 frames or 5%), indices are drawn again over the frames that really decode; further
short is a truncated file (an error). Frames past the header's count are never sampled.

Errors are ``SampleError`` naming the file: unreadable/corrupt/truncated container, no video
stream (e.g. audio only), no decoder for the codec, no decodable frames (zero-length video).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from align.errors import SampleError

MAX_MISSING_FRAMES = 2  # tolerated shortfall of decodable frames against the header's count ...
MAX_MISSING_FRACTION = 0.05  # ... or this fraction of it, whichever is larger
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")


@dataclass(frozen=True)
class FrameSampler:
    """Which T source frames of a clip to use; see the module docstring for the policy."""

    frames: int = 8
    sampling: Literal["uniform", "segment"] = "uniform"
    stride: int = 1
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.frames < 1 or self.stride < 1 or (self.fps is not None and self.fps <= 0):
            raise ValueError(f"frames and stride must be >= 1 and fps > 0, got {self}")
        if self.sampling not in ("uniform", "segment"):
            raise ValueError(f"sampling must be 'uniform' or 'segment', not {self.sampling!r}")

    def grid(self, n_frames: int, source_fps: float | None = None) -> np.ndarray:
        """Source indices of the candidate frames (fps resampling, then stride)."""
        idx = np.arange(n_frames)
        if self.fps is not None and source_fps:
            n_out = max(1, int(np.floor(n_frames * self.fps / source_fps + 1e-6)))
            idx = np.minimum(np.floor(np.arange(n_out) * source_fps / self.fps + 1e-6).astype(np.int64), n_frames - 1)
        return idx[:: self.stride]

    def positions(self, n: int, train: bool) -> np.ndarray:
        """T positions into a grid of ``n`` candidates (repeating positions when n < T)."""
        t = self.frames
        if self.sampling == "uniform":
            return np.linspace(0, n - 1, t).round().astype(np.int64)
        edges = np.linspace(0, n, t + 1)
        lo = np.floor(edges[:-1]).astype(np.int64)
        hi = np.maximum(np.floor(edges[1:]).astype(np.int64), lo + 1)
        if train:
            u = torch.rand(t, dtype=torch.float64).numpy()
            return np.minimum(lo + np.floor(u * (hi - lo)).astype(np.int64), n - 1)
        return np.minimum(np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64), n - 1)

    def indices(self, n_frames: int, source_fps: float | None = None, *, train: bool = False) -> np.ndarray:
        """The T source frame indices to decode for a clip of ``n_frames`` frames."""
        if n_frames < 1:
            raise ValueError("a clip with no frames has nothing to sample")
        grid = self.grid(n_frames, source_fps)
        return grid[self.positions(len(grid), train)]


def read_video(raw: Any, sampler: FrameSampler, *, train: bool = False) -> np.ndarray:
    """T sampled frames of one raw video sample as uint8 ``[T, H, W, 3]`` (RGB)."""
    if isinstance(raw, (np.ndarray, torch.Tensor, list, tuple)):
        frames = as_frame_array(raw)
        return frames[sampler.indices(len(frames), None, train=train)]
    source, where = _open_target(raw)
    with _decode_errors(where):
        n_frames, fps = _frame_count(source, where)
        wanted = sampler.indices(n_frames, fps, train=train)
        got, n_decoded = _decode_at(source, where, wanted)
        if len(got) < len(set(wanted.tolist())):  # the stream ended before the header said
            _check_shortfall(where, n_frames, n_decoded)
            wanted = sampler.indices(n_decoded, fps, train=train)
            got, _ = _decode_at(source, where, wanted)
        return np.stack([got[int(i)] for i in wanted])


def decode_all(raw: Any) -> np.ndarray:
    """Every frame of a video file/bytes as uint8 ``[N, H, W, 3]`` (a reference decode; slow)."""
    source, where = _open_target(raw)
    with _decode_errors(where), _open(source, where) as container:
        stream = _video_stream(container, where)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise SampleError(f"{where}: no decodable frames (zero-length or corrupt video)")
    return np.stack(frames)


@contextlib.contextmanager
def _decode_errors(where: str) -> Iterator[None]:
    """FFmpeg/PyAV failures while demuxing or decoding become a ``SampleError`` naming the file."""
    import av

    try:
        yield
    except SampleError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError, IndexError, RuntimeError) as err:
        raise SampleError(f"{where}: cannot decode video, corrupt or truncated? ({err})") from None


def _frame_count(source: Any, where: str) -> tuple[int, float | None]:
    """(frames, fps) from the header; without a count there (webm, mkv), by counting packets
    (demuxing only, no decoding). A header that counts fewer frames than the stream holds wins:
    frames past its count are never sampled."""
    with _open(source, where) as container:
        stream = _video_stream(container, where)
        n_frames = int(stream.frames or 0)
        if n_frames <= 0:
            n_frames = sum(1 for p in container.demux(stream) if p.size > 0)
        if n_frames <= 0:
            raise SampleError(f"{where}: video has no frames (zero-length video)")
        return n_frames, _rate(stream)


def _check_shortfall(where: str, expected: int, decoded: int) -> None:
    """A frame count off by a little is common (headers, edit lists): the indices are drawn again
    over what decodes. Far fewer frames than announced means a truncated or corrupt file."""
    if decoded == 0:
        raise SampleError(f"{where}: no decodable frames (zero-length or corrupt video)")
    if expected - decoded > max(MAX_MISSING_FRAMES, MAX_MISSING_FRACTION * expected):
        raise SampleError(
            f"{where}: truncated or corrupt video: the header announces {expected} frames but only {decoded} decode"
        )


def video_info(raw: Any) -> dict[str, Any]:
    """Header facts of a video file/bytes: frames (0 if unknown), fps, width, height, codec."""
    source, where = _open_target(raw)
    with _open(source, where) as container:
        s = _video_stream(container, where)
        return {
            "frames": int(s.frames or 0),
            "fps": _rate(s),
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "codec": s.codec_context.name,
        }


def as_frame_array(raw: Any) -> np.ndarray:
    """Decoded frames ``[T, H, W]`` / ``[T, H, W, C]`` (C in 1, 3, 4) -> uint8 ``[T, H, W, 3]``."""
    arr = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:3]) < 1:
        raise SampleError(
            f"video array must be [T, H, W] or [T, H, W, C] (C in 1, 3, 4) with T >= 1, "
            f"got shape {tuple(np.shape(raw))}"
        )
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number):
            raise SampleError(f"video array must be numeric, got dtype {arr.dtype}")
        scale = 255.0 if arr.size and arr.max() <= 1.0 and np.issubdtype(arr.dtype, np.floating) else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _open_target(raw: Any) -> tuple[Any, str]:
    """(a path or bytes to open, a description naming the file for error messages)."""
    if isinstance(raw, dict):  # HF datasets Video/Image-style dict
        if raw.get("bytes") is not None:
            return bytes(raw["bytes"]), f"video bytes from {raw.get('path') or 'dataset'}"
        if raw.get("path"):
            return str(raw["path"]), f"video file {raw['path']}"
        raise SampleError("video dict has neither 'bytes' nor 'path'")
    if isinstance(raw, (str, Path)):
        if not Path(raw).is_file():
            raise SampleError(f"video file {raw}: no such file")
        return str(raw), f"video file {raw}"
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw), "video bytes"
    raise SampleError(f"cannot read a video from {type(raw).__name__}")


def _open(source: Any, where: str):
    import av

    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, metadata_errors="ignore")
    except (av.FFmpegError, OSError, EOFError, ValueError, IndexError) as err:
        if _is_empty(source):
            kind = "empty file (zero-length video)"
        elif isinstance(err, EOFError):
            kind = "container ends before any frame (zero-length or truncated video)"
        else:
            kind = "not a readable video container (corrupt or truncated?)"
        raise SampleError(f"{where}: {kind} ({err})") from None


def _is_empty(source: Any) -> bool:
    return len(source) == 0 if isinstance(source, bytes) else Path(source).stat().st_size == 0


def _video_stream(container, where: str):
    if not container.streams.video:
        kinds = [s.type for s in container.streams] or ["none"]
        raise SampleError(f"{where}: no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.name in (None, "", "none"):
        raise SampleError(f"{where}: unsupported video codec (no decoder in this FFmpeg build)")
    return stream


def _rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _decode_at(source: Any, where: str, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """RGB frames at the wanted indices (decoding in order, stopping after the last), and how many
    frames were decoded."""
    need = set(int(i) for i in wanted)
    last = max(need)
    got: dict[int, np.ndarray] = {}
    n = 0
    with _open(source, where) as container:
        stream = _video_stream(container, where)
        size: tuple[int, int] | None = None
        for n, frame in enumerate(container.decode(stream), start=1):
            i = n - 1
            if i in need:
                size = size or (frame.width, frame.height)  # a mid-stream size change is rescaled
                got[i] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            if i >= last:
                break
    return got, n
