"""Samples/s of the audio and video preprocessing pipelines (decode -> tensors -> batch), as the
trainer runs them: PairedDataset in DataLoader workers, training-mode augmentation.

    python benchmarks/media_pipeline.py                 # workers 0, 1, 2; 3 repeats; medians
    python benchmarks/media_pipeline.py --workers 2 --repeats 5
    python benchmarks/media_pipeline.py --smoke         # workers 0, 1; batch 2; 1 batch: seconds (CI)

audio: the 2,700 FSDD training recordings (8 kHz WAV), the fsdd-audio-text.yaml front end (1 s,
64 mel bins, SpecAugment) and the same at 16 kHz (resampling included). video: the three real
mmaction2 clips (h264 mp4 340x256, mpeg4 avi 320x240) repeated, 8 frames uniformly sampled,
random resized crop to 224 px.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from align.config.dataset import DatasetSpec
from align.data.tables import Collator, PairedDataset, load_table
from align.modalities import build_adapter
from align.training.engine import one_thread_per_worker

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FSDD_PATTERN = r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$"
SMOKE = {"workers": [0, 1], "repeats": 1, "batches": 1, "batch_size": 2}  # --smoke defaults: every pipeline, tiny


def audio_setup(rate: int):
    spec = DatasetSpec(
        source="files",
        data_files=str(DATA / "audio/fsdd/recordings/*.wav"),
        load_kwargs={"pattern": FSDD_PATTERN},
        where={"take": {"ge": 5}},
        columns={"audio": "path"},
    )
    adapter = build_adapter(
        "audio",
        {
            "sample_rate": rate,
            "clip_seconds": 1.0,
            "n_mels": 64,
            "freq_mask": 8,
            "time_mask": 10,
            "width": 32,
            "layers": 1,
            "heads": 2,
        },
    )
    return load_table(spec), {"audio": "path"}, {"audio": adapter.preprocessor()}, 64


def video_setup():
    import datasets

    clips = [str(DATA / "video/mmaction2_clips" / n) for n in ("demo.mp4", "test.mp4", "test.avi")]
    table = datasets.Dataset.from_dict({"video": clips * 16})
    adapter = build_adapter(
        "video",
        {
            "frames": 8,
            "image": {"vision_cfg": {"image_size": 224, "patch_size": 32, "width": 64, "layers": 1, "head_width": 32}},
        },
    )
    return table, {"video": "video"}, {"video": adapter.preprocessor()}, 8


def samples_per_s(table, columns, pre, batch_size: int, workers: int, max_batches: int) -> float:
    ds = PairedDataset(table, columns, pre, train=True)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=Collator(pre),
        worker_init_fn=one_thread_per_worker,
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0, n = time.perf_counter(), 0
    for _, batch in zip(range(max_batches), it):
        n += len(batch["index"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=None, help="samples per batch (default: audio 64, video 8)")
    ap.add_argument("--smoke", action="store_true", help=f"tiny run of every pipeline (CI): {SMOKE}")
    args = ap.parse_args()
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args()
    cases = {
        "audio FSDD 8 kHz (ast front end)": lambda: audio_setup(8000),
        "audio FSDD -> 16 kHz (resample + ast front end)": lambda: audio_setup(16000),
        "video mmaction2 8 frames @224": video_setup,
    }
    print(f"{'pipeline':50s} {'workers':>7s} {'samples/s (median)':>19s}  runs")
    for name, setup in cases.items():
        table, columns, pre, bs = setup()
        bs = args.batch_size or bs
        for w in args.workers:
            runs = [samples_per_s(table, columns, pre, bs, w, args.batches) for _ in range(args.repeats)]
            print(f"{name:50s} {w:7d} {statistics.median(runs):19.1f}  {[round(r, 1) for r in runs]}")


if __name__ == "__main__":
    main()
