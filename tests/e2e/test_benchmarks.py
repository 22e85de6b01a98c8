"""Every benchmark in benchmarks/ runs end to end in its ``--smoke`` mode (tiny sizes, CPU, no
downloads) and prints its table, so a benchmark that breaks fails the suite.

Each runs as a subprocess (``sys.executable benchmarks/<name>.py --smoke``, cwd the repository root,
one BLAS / OpenMP thread, Hugging Face offline), as a user would start it. The selected runs are
started by one module fixture, two at a time (each is single-threaded), longest first; each test
waits for its own and checks the exit status and the lines of its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
PARALLEL = 2
TIMEOUT_S = 300

# name -> (real data it reads, or None; regexes its stdout must match), longest smoke run first
BENCHMARKS: dict[str, tuple[Path | None, list[str]]] = {
    "gradcache": (
        None,
        [
            r"\| batch 64 \| median step s \| samples/s \|",
            r"\| plain \| \d+\.\d+ \| \d+ \|",
            r"\| GradCache, micro 16 \| \d+\.\d+ \|",
            r"overhead GradCache / plain: \d+\.\d+x",
            r"\| step \| rows \| wall s \| samples/s \| peak RSS GB \|",
            r"\| GradCache, micro 64, tiled loss \| 256 \| \d+\.\d+ \|",
        ],
    ),
    "loss_memory": (
        None,
        [
            r"\| loss \| B \| open_clip peak extra \| ours peak extra \| memory ours/open_clip",
            r"\| clip \| 256 \| \d+ [KMG]i?B \| \d+ [KMG]i?B \|",
            r"\| siglip \| 256 \| \d+ [KMG]i?B \| \d+ [KMG]i?B \|",
            r"versions: .*open_clip \d",
        ],
    ),
    "train_step": (
        None,
        [
            r"first-step loss: open_clip \S+  align \S+  max \|diff\| \S+",
            r"\| implementation \| median step ms \| median samples/s \| ratio \|",
            r"\| open_clip \| \d+\.\d \| \d+\.\d \| 1\.000 \|",
            r"\| align \| \d+\.\d \| \d+\.\d \| \d+\.\d{3} \|",
            r"target ratio >= 0\.95: (OK|BELOW TARGET)",
        ],
    ),
    "frozen_cache": (
        DATA / "graph" / "chebi20" / "validation.txt",
        [
            r"\| variant \| setup s \| median step s \| 600-step run",
            r"\| recomputed \| \d+\.\d \| \d+\.\d{3} \|",
            r"\| cached \| \d+\.\d \| \d+\.\d{3} \|",
            r"speed-up \(recomputed / cached\), end to end: \d+\.\d+x; per step: \d+\.\d+x",
            r"largest loss difference between the runs over 8 steps",
        ],
    ),
    "higher_order": (
        DATA / "audio" / "fsdd" / "recordings",
        [
            r"\| objective \| scored by \| held-out top-1 \| train top-1 \| train time \|",
            r"\| clip \| cosine \(own\) \| \*\*0\.\d{3}\*\* \|",
            r"\| symile \| mip \(own\) \| \*\*0\.\d{3}\*\* \|",
            r"\| gram \| volume \(own\) \| \*\*0\.\d{3}\*\* \|",
            r"held-out: 32 test triples",
        ],
    ),
    "media_pipeline": (
        DATA / "video" / "mmaction2_clips",
        [
            r"pipeline +workers +samples/s \(median\) +runs",
            r"audio FSDD 8 kHz \(ast front end\) +0 +\d+\.\d",
            r"audio FSDD -> 16 kHz .* +1 +\d+\.\d",
            r"video mmaction2 8 frames @224 +1 +\d+\.\d",
        ],
    ),
    "graph_encoders": (
        DATA / "graph" / "chebi20" / "validation.txt",
        [
            r"preprocessing \(SMILES -> Data -> Batch\), 1 process: [\d,]+ molecules/s",
            r"\| encoder \| training samples/s \(median of 1\) \| min \| max \|",
            *(rf"\| {enc} \| [\d,]+ \|" for enc in ("gin", "gcn", "gat", "gatv2")),
        ],
    ),
    "eval_speed": (
        None,
        [
            r"\| implementation \| median seconds \| peak extra memory \| text→image R@1/5/10",
            r"\| align \(ours\) `retrieval_metrics` \(×1\) \| \d+\.\d\d \|",
            r"\| CLIP_benchmark-style dense \(×1\) \|",
            r"Identical hit counts \(ours ties='index' vs CLIP_benchmark topk\): ",
        ],
    ),
    "pointcloud_encoders": (
        DATA / "pointcloud" / "dales_objects" / "dales_objects_499.npz",
        [
            r"\| encoder \| options \| params \| step ms \| samples/s \|",
            r"\| pointnet \(defaults\) \| defaults \| \d+\.\d\d M \| \d+ \|",
            r"\| patch \(defaults\) \|",
            r"\| dales-pointcloud-text-patch \|",
            r"\| preprocess \(train, 128 points, 20 DALES objects\) \| median ms",
            r"\| fps \| \d+\.\d\d \|",
            r"\| random \| \d+\.\d\d \|",
        ],
    ),
    "cpu_contention": (
        None,
        [
            r"# cpu_contention: \d+ CPUs, load average before",
            r"\| workload \| busy processes \| setting \| torch threads \| median rate /s \|",
            r"\| train \| 0 \| align \| 1 \| \d+\.\d \|",
            r"\| encode \| 0 \| align \| 1 \| \d+\.\d \|",
        ],
    ),
    "serve_load": (
        None,
        [
            r"# serve_load: \d+ CPUs, load average before",
            r"in-process batched \(Searcher\.search, 64 text queries per call\): \d+ q/s",
            r"\| text \| 1 \| 40 \| \d+\.\d \| \d+\.\d \| \d+\.\d \| \d+\.\d\dx \| 0 \|",
            r"\| image \| 4 \| 40 \| \d+\.\d \|",
            r"server RSS: \d+ MB before, \d+ MB after 160 requests",
            r"batching off \(--max-batch 1\), text at concurrency 4: \d+\.\d requests/s, .*batching: \d+\.\d\dx",
            r"server exit after SIGTERM: 0",
        ],
    ),
    "index_scale": (
        DATA / "image" / "mnist5k" / "mnist_5k.csv.gz",
        [
            r"# index_scale: \d+ CPUs, load average before",
            r"## Scale: 2,000,000 SYNTHETIC clustered vectors .* 32-d, `IVF256,SQ8`, lists on disk",
            r"\| 2,000,000 \| 244 MiB \| 200 MiB \| \d+\.\d \| [\d,]+ MiB \| [\d,]+ MiB \| "
            r"\d+ MiB \| \d+ MiB \| \d+\.\d\d \| [01]\.\d{3} \|",
            r"all of them at once under the cap: MemoryError \(the cap bites\); 2,000,000 items loaded",
            r"## Frontier: 1,000 real MNIST image embeddings \(64-d\)",
            r"\| `Flat` \| ram \| 1\.000 \| 1\.000 \| [\d,]+ \| [\d,]+ \| 1\.00x \|",
            r"\| `IVF16,SQ8`\* \| ondisk \| [01]\.\d{3} \| [01]\.\d{3} \|",
            r"\| `IVF16,PQ8,Refine\(SQ8\)`\* \| ram \|",
            r"target recall@10 >= 0\.95 at >= 10x exact's queries/s: (MET|NOT MET)",
            r"target recall@10 >= 0\.90 at <= 1/10 of Flat's memory \(RAM\): (MET|NOT MET)",
        ],
    ),
    "wise_ft": (
        DATA / "image" / "mnist5k" / "mnist_5k.csv.gz",
        [
            r"# wise_ft: \d+ CPUs, load average before",
            r"\| method \| alpha \| MNIST test zero-shot top-1 \| digits test zero-shot top-1 \|",
            r"\| full \| 0\.00 \| [01]\.\d{4} \| [01]\.\d{4} \|",
            r"\| LiT \(image locked\) \| 0\.50 \| [01]\.\d{4} \| [01]\.\d{4} \|",
            r"\| LoRA r8 \(both towers\) \| 1\.00 \| [01]\.\d{4} \| [01]\.\d{4} \|",
        ],
    ),
    "prompt_wording": (
        None,
        [
            r"# prompt_wording: \d+ CPUs, load average before",
            r"\| prompt set \| example \| from scratch \(open_clip text tower\) \| MiniLM frozen \(LiT\) \|",
            r"\| training wording \| a photo of the number five\. \| [01]\.\d{4} \| [01]\.\d{4} \| [01]\.\d{4} \|",
            r"\| German \| die Zahl fünf\. \| [01]\.\d{4} \| [01]\.\d{4} \| [01]\.\d{4} \|",
        ],
    ),
    "few_shot": (
        None,
        [
            r"### digits: image -> 10 classes, zero-shot [01]\.\d{3}",
            r"\| method \| 1-shot \| 2-shot \|",
            r"\| linear-probe \| [01]\.\d{3} ± \d\.\d{3} \| [01]\.\d{3} ± \d\.\d{3} \|",
            r"\| cocoop \| [01]\.\d{3} ± \d\.\d{3} \|",
            r"### digits base-to-novel, 2 shots",
            r"\| coop \| [01]\.\d{3} ± \d\.\d{3} \| [01]\.\d{3} ± \d\.\d{3} \| [01]\.\d{3} ± \d\.\d{3} \|",
            r"\| coop-csc \| [01]\.\d{3} ± \d\.\d{3} \| n/a \| n/a \|",
        ],
    ),
    "faiss_index": (
        None,
        [
            r"\| N \| data \| index \| build s \(incl\. train\) \| search param \| queries/s \| recall@10 \|",
            r"\| 2,000 \| uniform \| `Flat` \| \d+\.\d \| exact \| [\d,]+ \| 1\.000 \|",
            *(rf"\| 2,000 \| uniform \| `{spec}` \|" for spec in ("HNSW32", "IVF32,Flat", "IVF32,PQ64")),
        ],
    ),
}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {"memory"}  # memory.py: shared helper
    assert scripts == set(BENCHMARKS)
    for name in scripts:
        assert "--smoke" in (REPO / "benchmarks" / f"{name}.py").read_text(), name
    assert "--smoke" in (REPO / "benchmarks" / "README.md").read_text()


def smoke(name: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def smoke_runs(request) -> dict[str, Future]:
    """The selected benchmarks' smoke runs, started together (PARALLEL at a time, longest first)."""
    wanted = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "name" in item.callspec.params
    }
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    runs = {
        name: pool.submit(smoke, name)
        for name in BENCHMARKS
        if name in wanted and (BENCHMARKS[name][0] is None or BENCHMARKS[name][0].exists())
    }
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_smoke_run_prints_its_table(name, smoke_runs):
    data, patterns = BENCHMARKS[name]
    if data is not None and not data.exists():
        pytest.skip(f"{data} not found")
    proc = smoke_runs[name].result()
    assert proc.returncode == 0, f"{name} --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    missing = [p for p in patterns if not re.search(p, proc.stdout)]
    assert not missing, f"{name} --smoke printed no line matching {missing}:\n{proc.stdout[-4000:]}"
