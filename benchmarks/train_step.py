"""Training-step throughput: align vs open_clip, same towers, same batch, same run, on this CPU.

What it measures
    The wall time of one optimizer step, for

    * open_clip: an ``open_clip.model.CLIP(embed_dim, vision_cfg, text_cfg)``, ``open_clip.ClipLoss``
      and ``torch.optim.AdamW`` (open_clip_train's decay / no-decay split), stepped the way
      ``open_clip_train.train.train_one_epoch`` does it: zero_grad, ``model(images, texts)``
      (encode_image / encode_text with normalize=True, ``logit_scale.exp()``), loss, backward,
      ``clip_grad_norm_``, ``optimizer.step``, clamp ``logit_scale`` to [0, ln 100];
    * align: an ``align.model.align_model.AlignModel`` built from an ``align.config.schema.ModelConfig`` whose ``image``
      and ``text`` adapters are built from the *same* vision_cfg / text_cfg with ``head: identity``,
      given the open_clip model's weights, prepared with ``accelerate.Accelerator(cpu=True)`` the way
      ``align.app.trainer.train`` prepares it, and stepped with ``align.app.trainer.train_step`` (with the
      non-finite-loss check on, as align's trainer always runs it, and the ``clip`` loss with
      ``local_loss=True, rank=0, world_size=1``).

    Both consume one pre-built synthetic batch (random images [B, 3, H, W], random token ids
    [B, context_length], the same tensors on both sides), so no data loading is timed. The
    first-step losses of the two must agree to 1e-5 (the script aborts otherwise). Both sides use
    no LR scheduler by default, so they stay numerically identical to the end (the final losses are
    printed); ``--scheduler cosine`` gives each side its own trainer's cosine schedule (open_clip_train's
    ``cosine_lr`` called before the step; align's transformers schedule stepped after it, whose first
    warm-up step has lr 0), so the weights then drift apart but the work per step is the same.

How
    Each implementation lives in its own worker process (as in a real training run: one model,
    one heap), started by this script; the parent only sends "run N steps" and collects the
    per-step times, so exactly one worker computes at any moment. (In one shared process the two
    models' allocations interleave in one malloc heap and which side pays extra page faults depends
    on the order of the frees, e.g. whose gradients stay alive between blocks: a 5-10% bias either
    way on this machine.) After warm-up the two are timed in alternating blocks (A B, B A, A B, ...
    so slow drift of the machine cancels), each step with time.perf_counter. Reported: median step
    time and median samples/s per implementation and the ratio align / open_clip (1.0 = same speed;
    the target is >= 0.95), plus a paired estimate (median of the back-to-back block ratios).

    Timings on a shared 2-core machine are noisy: the medians are robust to a few slow blocks, and
    the per-block medians and the load average are printed so a disturbed run shows. With other
    processes busy, torch's default 2 intra-op threads can make every step ~10x slower (each op's
    parallel region waits for a descheduled thread); ``--threads 1`` is far steadier then, and
    ``--time-budget`` (default 100 s) ends the timed repeats early so a run stays a few minutes.

Rerun (defaults: about 1 minute on 2 idle CPU cores, 2-3 when the machine is busy)::

    python benchmarks/train_step.py
    python benchmarks/train_step.py --batch-size 128 --repeats 7 --steps 10 --json bench.json
    python benchmarks/train_step.py --profile   # + align without accelerate's wrappers, + cProfile
    python benchmarks/train_step.py --smoke     # batch 4, 1-layer towers, 2 x 1 timed steps: seconds (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from memory import peak_rss_bytes  # noqa: E402 -- benchmarks/memory.py, this script's folder

from align.config.schema import ModelConfig, TrainConfig  # noqa: E402
from align.model.align_model import AlignModel, contrastive_loss  # noqa: E402
from align.objectives.factory import build_loss  # noqa: E402
from align.objectives.task import ContrastiveTask  # noqa: E402
from align.training.engine import build_optimizer, param_groups  # noqa: E402
from align.training.loop import TrainingError, train_step  # noqa: E402

LOSS_TOL = 1e-5
OPEN_CLIP, ALIGN, ALIGN_PLAIN = "open_clip", "align", "align, plain torch calls"
SMOKE = {
    "batch_size": 4,
    "warmup": 1,
    "repeats": 2,
    "steps": 1,
    "time_budget": 0.0,
    "threads": 1,
    "profile_steps": 1,
    "embed_dim": 32,
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 32,
    "vision_layers": 1,
    "vision_head_width": 16,
    "context_length": 8,
    "vocab_size": 1000,
    "text_width": 32,
    "text_layers": 1,
}  # --smoke defaults: both sides, tiny towers


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation")
    g.add_argument("--repeats", type=int, default=12, help="timed blocks per implementation (interleaved)")
    g.add_argument("--steps", type=int, default=5, help="timed steps per block")
    g.add_argument(
        "--time-budget",
        type=float,
        default=100.0,
        help="stop timing after the repeat (one block of each) that passes this many seconds "
        "(at least 2 repeats run); 0 = no limit. Keeps a run on a busy machine short",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    g.add_argument(
        "--scheduler",
        choices=["none", "cosine"],
        default="none",
        help="none: no LR scheduler on either side; cosine: open_clip_train's cosine_lr vs "
        "align's transformers cosine schedule (prepared by accelerate)",
    )
    g.add_argument(
        "--plain-adamw",
        action="store_true",
        help="give align open_clip's unfused AdamW instead of the trainer's fused one, to see "
        "the toolkit's own overhead alone",
    )
    g.add_argument("--json", type=Path, default=None, help="also write the results here")
    g.add_argument(
        "--profile",
        action="store_true",
        help=f"also time '{ALIGN_PLAIN}' (align's model and loss stepped without accelerate's "
        "wrappers) in the rotation, and print a cProfile of align's train_step",
    )
    g.add_argument("--profile-steps", type=int, default=10, help="steps under cProfile for --profile")
    g.add_argument("--smoke", action="store_true", help=f"tiny run of the same path, both sides (CI): {SMOKE}")
    o = p.add_argument_group("optimizer (same on both sides)")
    o.add_argument("--lr", type=float, default=5e-4)
    o.add_argument("--weight-decay", type=float, default=0.2)
    o.add_argument("--grad-clip", type=float, default=1.0)
    m = p.add_argument_group("towers")
    m.add_argument("--embed-dim", type=int, default=128)
    m.add_argument("--image-size", type=int, default=64)
    m.add_argument("--patch-size", type=int, default=8)
    m.add_argument("--vision-width", type=int, default=128)
    m.add_argument("--vision-layers", type=int, default=3)
    m.add_argument("--vision-head-width", type=int, default=64)
    m.add_argument("--context-length", type=int, default=32)
    m.add_argument("--vocab-size", type=int, default=49408)
    m.add_argument("--text-width", type=int, default=128)
    m.add_argument("--text-heads", type=int, default=2)
    m.add_argument("--text-layers", type=int, default=3)
    args = p.parse_args(argv)
    if args.smoke:  # the workers parse the same argv, so they build the same tiny towers
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
    return args


def tower_cfgs(a: argparse.Namespace) -> tuple[dict, dict]:
    vision_cfg = {
        "image_size": a.image_size,
        "patch_size": a.patch_size,
        "width": a.vision_width,
        "layers": a.vision_layers,
        "head_width": a.vision_head_width,
    }
    text_cfg = {
        "context_length": a.context_length,
        "vocab_size": a.vocab_size,
        "width": a.text_width,
        "heads": a.text_heads,
        "layers": a.text_layers,
    }
    return vision_cfg, text_cfg


def total_steps(a) -> int:
    """Length of the LR schedule (--scheduler cosine): every step any worker may take."""
    return a.warmup + a.repeats * a.steps + (a.profile_steps if a.profile else 0)


def make_batch(a) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(a.seed + 1)
    images = torch.randn(a.batch_size, 3, a.image_size, a.image_size, generator=g)
    texts = torch.randint(1, a.vocab_size, (a.batch_size, a.context_length), generator=g)
    return images, texts


# ---------------------------------------------------------------------------------------------
# open_clip side
# ---------------------------------------------------------------------------------------------


def build_open_clip(a, vision_cfg, text_cfg):
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(a.seed)
    model = CLIP(a.embed_dim, CLIPVisionCfg(**vision_cfg), CLIPTextCfg(**text_cfg), output_dict=True)
    # open_clip_train/main.py's parameter split
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": gain_or_bias, "weight_decay": 0.0}, {"params": rest, "weight_decay": a.weight_decay}],
        lr=a.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=0, world_size=1)
    scheduler = None
    if a.scheduler == "cosine":
        from open_clip_train.scheduler import cosine_lr

        scheduler = cosine_lr(optimizer, a.lr, a.warmup, total_steps(a))
    return model, optimizer, loss, scheduler


def make_open_clip_step(model, optimizer, loss, scheduler, grad_clip):
    """The body of open_clip_train.train.train_one_epoch for accum_freq=1, fp32, no distill."""
    counter = [0]

    def step(images, texts):
        if scheduler is not None:
            scheduler(counter[0])
        counter[0] += 1
        optimizer.zero_grad()
        model_out = model(images, texts)
        losses = loss(**model_out, output_dict=True)
        total_loss = sum(losses.values())
        total_loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return total_loss

    return step


# ---------------------------------------------------------------------------------------------
# align side
# ---------------------------------------------------------------------------------------------


def build_align(a, vision_cfg, text_cfg, clip_model):
    from accelerate import Accelerator

    cfg = ModelConfig(
        embed_dim=a.embed_dim,
        loss="clip",
        modalities={
            "image": {"options": {"vision_cfg": vision_cfg, "output_dim": a.embed_dim}, "head": "identity"},
            "text": {"options": {"text_cfg": text_cfg, "output_dim": a.embed_dim}, "head": "identity"},
        },
    )
    model = AlignModel(cfg)
    copy_clip_weights(clip_model, model)

    threads = torch.get_num_threads()
    accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)  # as align.app.trainer.build_accelerator
    if torch.get_num_threads() != threads:
        raise RuntimeError(
            f"accelerate changed torch threads {threads} -> {torch.get_num_threads()}; the comparison would not be fair"
        )
    # the trainer's own optimizer (AdamW, open_clip's decay split, fused kernel)
    tc = TrainConfig(lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.98), eps=1e-6)
    if a.plain_adamw:
        optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tc.betas, eps=tc.eps)
    else:
        optimizer = build_optimizer(model, tc)
    if a.scheduler == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        scheduler = get_cosine_schedule_with_warmup(optimizer, a.warmup, total_steps(a))
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        scheduler = None
        model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    loss_fn = build_loss("clip", local_loss=True, rank=0, world_size=1)

    def nonfinite(loss, batch):  # align.app.trainer.train always passes such a callback
        raise TrainingError(f"non-finite loss ({loss.item()})")

    return accelerator, model, core, optimizer, scheduler, loss_fn, nonfinite


def copy_clip_weights(clip_model, align_model) -> None:
    """open_clip CLIP keys -> AlignModel keys: visual.* -> adapters.image.tower.*, the inline text
    parts -> adapters.text.tower.*, logit_scale -> logit_scale. Every key must be used exactly once."""
    src = clip_model.state_dict()
    dst = align_model.state_dict()
    mapped = {}
    for k, v in src.items():
        if k == "logit_scale":
            nk = "logit_scale"
        elif k.startswith("visual."):
            nk = "adapters.image.tower." + k[len("visual.") :]
        else:
            nk = "adapters.text.tower." + k
        if nk not in dst:
            raise RuntimeError(f"weight mapping: open_clip key {k!r} -> {nk!r} has no place in AlignModel")
        if k == "logit_scale" and v.numel() == dst[nk].numel() == 1:
            v = v.reshape(dst[nk].shape)  # align keeps it [1] (FSDP2 refuses 0-d parameters), open_clip 0-d
        if dst[nk].shape != v.shape:
            raise RuntimeError(f"weight mapping: {k!r} {tuple(v.shape)} vs {nk!r} {tuple(dst[nk].shape)}")
        mapped[nk] = v
    missing = sorted(set(dst) - set(mapped))
    if missing:
        raise RuntimeError(f"weight mapping: AlignModel keys not filled from open_clip: {missing[:8]}")
    align_model.load_state_dict(mapped, strict=True)
    n_src = sum(p.numel() for p in clip_model.parameters())
    n_dst = sum(p.numel() for p in align_model.parameters())
    if n_src != n_dst:
        raise RuntimeError(f"parameter counts differ: open_clip {n_src} vs align {n_dst}")


def make_align_step(accelerator, model, core, optimizer, scheduler, loss_fn, nonfinite, grad_clip):
    task = ContrastiveTask(core, loss_fn, [("image", "text")], ["image", "text"])

    def step(images, texts):
        batch = {"image": images, "text": texts}
        return train_step(accelerator, model, task, batch, optimizer, scheduler, grad_clip, on_nonfinite=nonfinite)

    return step


def make_align_plain_step(model, core, optimizer, scheduler, loss_fn, grad_clip):
    """train_step's work on align's model and loss with plain torch calls, no accelerate wrappers
    (--profile only: it separates accelerate's per-step cost from align's model/loss)."""

    def unwrap(obj, attr):  # accelerate's AcceleratedOptimizer / AcceleratedScheduler
        return getattr(obj, attr, obj)

    inner_opt = unwrap(optimizer, "optimizer")
    inner_sched = unwrap(scheduler, "scheduler") if scheduler is not None else None
    pairs = [("image", "text")]

    def step(images, texts):
        loss = contrastive_loss(core, model({"image": images, "text": texts}), pairs, loss_fn)
        if not torch.isfinite(loss.detach()).item():
            raise RuntimeError("non-finite loss")
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        inner_opt.step()
        if inner_sched is not None:
            inner_sched.step()
        inner_opt.zero_grad(set_to_none=True)
        core.clamp_logit_scale_()
        return loss

    return step


# ---------------------------------------------------------------------------------------------
# worker process: one implementation, driven by the parent over a pipe
# ---------------------------------------------------------------------------------------------


def build_impl(impl: str, a):
    """-> (step(images, texts) -> loss, eval_loss(images, texts) -> float, n_params)."""
    vision_cfg, text_cfg = tower_cfgs(a)
    clip_model, oc_opt, oc_loss, oc_sched = build_open_clip(a, vision_cfg, text_cfg)
    n_params = sum(p.numel() for p in clip_model.parameters())
    if impl == OPEN_CLIP:
        clip_model.train()

        @torch.no_grad()
        def eval_loss(images, texts):
            # ruff sees the `del` on the other branch below; these names are bound here
            out = clip_model(images, texts)  # noqa: F821
            return oc_loss(out["image_features"], out["text_features"], out["logit_scale"]).item()  # noqa: F821

        return make_open_clip_step(clip_model, oc_opt, oc_loss, oc_sched, a.grad_clip), eval_loss, n_params

    accelerator, model, core, opt, sched, loss_fn, nonfinite = build_align(a, vision_cfg, text_cfg, clip_model)
    del clip_model, oc_opt, oc_loss, oc_sched  # the open_clip model only lent its weights
    gc.collect()
    model.train()

    @torch.no_grad()
    def eval_loss(images, texts):
        return contrastive_loss(core, model({"image": images, "text": texts}), [("image", "text")], loss_fn).item()

    if impl == ALIGN:
        step = make_align_step(accelerator, model, core, opt, sched, loss_fn, nonfinite, a.grad_clip)
    elif impl == ALIGN_PLAIN:
        step = make_align_plain_step(model, core, opt, sched, loss_fn, a.grad_clip)
    else:
        raise ValueError(impl)
    return step, eval_loss, n_params


def time_block(step, images, texts, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step(images, texts)
        out.append(time.perf_counter() - t0)
    return out


def cprofile_text(step, images, texts, n: int) -> str:
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        step(images, texts)
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(r"accelerate|/align/|importlib", 30)
    return out.getvalue()


def worker(conn, impl: str, argv: list[str]) -> None:
    try:
        a = parse_args(argv)
        if a.threads:
            torch.set_num_threads(a.threads)
        step, eval_loss, n_params = build_impl(impl, a)
        images, texts = make_batch(a)
        conn.send(("ok", {"params": n_params, "threads": torch.get_num_threads()}))
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                break
            if cmd == "first":
                result = step(images, texts).item()
            elif cmd == "steps":
                gc.collect()
                result = time_block(step, images, texts, arg)
            elif cmd == "loss":
                result = eval_loss(images, texts)
            elif cmd == "profile":
                result = cprofile_text(step, images, texts, arg)
            elif cmd == "rss":
                result = peak_rss_bytes() / 2**20  # MiB
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", result))
    except BaseException:  # report to the parent, which aborts with this traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    def __init__(self, ctx, impl: str, argv: list[str]) -> None:
        self.impl = impl
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, impl, argv), name=f"bench-{impl}", daemon=True)
        self.proc.start()
        child.close()

    def result(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise SystemExit(f"worker '{self.impl}' died (exit code {self.proc.exitcode})") from None
        if status != "ok":
            raise SystemExit(f"worker '{self.impl}' failed:\n{value}")
        return value

    def ask(self, cmd: str, arg=None):
        self.conn.send((cmd, arg))
        return self.result()

    def stop(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=30)


# ---------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    from importlib.metadata import version  # not the packages themselves: the parent never steps a model

    oc_version, acc_version = version("open_clip_torch"), version("accelerate")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    impls = [OPEN_CLIP, ALIGN] + ([ALIGN_PLAIN] if a.profile else [])
    ctx = mp.get_context("spawn")  # fresh interpreters: no state shared with the parent or each other
    workers = {impl: Worker(ctx, impl, argv) for impl in impls}
    try:
        info = {impl: w.result() for impl, w in workers.items()}  # all build in parallel

        # step 1 of each, from identical weights and batch, is the correctness check (and warm-up step 1)
        first = {impl: w.ask("first") for impl, w in workers.items()}
        diffs = {impl: abs(first[impl] - first[OPEN_CLIP]) for impl in impls}
        print(
            "first-step loss: "
            + "  ".join(f"{impl} {first[impl]:.8f}" for impl in impls)
            + f"  max |diff| {max(diffs.values()):.2e}"
        )
        if not max(diffs.values()) <= LOSS_TOL:
            print(
                f"ABORT: first-step losses differ by more than {LOSS_TOL}; the steps do not compute the "
                "same thing, timings would be meaningless",
                file=sys.stderr,
            )
            return 1
        for _ in range(max(a.warmup - 1, 0)):
            for w in workers.values():
                w.ask("steps", 1)

        times: dict[str, list[float]] = {impl: [] for impl in impls}
        block_medians: dict[str, list[float]] = {impl: [] for impl in impls}
        t_timing = time.perf_counter()
        repeats_done = 0
        for r in range(a.repeats):
            for impl in impls if r % 2 == 0 else impls[::-1]:
                ts = workers[impl].ask("steps", a.steps)
                times[impl] += ts
                block_medians[impl].append(statistics.median(ts))
            repeats_done += 1
            if a.time_budget and r >= 1 and time.perf_counter() - t_timing > a.time_budget:
                break

        # both took the same steps on the same batch; without a scheduler they should still agree
        last = {impl: w.ask("loss") for impl, w in workers.items()}
        profile = workers[ALIGN].ask("profile", a.profile_steps) if a.profile else None
        rss = {impl: w.ask("rss") for impl, w in workers.items()}
    finally:
        for w in workers.values():
            w.stop()

    results = {}
    for impl in impls:
        med = statistics.median(times[impl])
        results[impl] = {
            "median_step_ms": med * 1e3,
            "samples_per_s": a.batch_size / med,
            "min_step_ms": min(times[impl]) * 1e3,
            "peak_rss_mb": rss[impl],
            "block_median_ms": [t * 1e3 for t in block_medians[impl]],
            "first_step_loss": first[impl],
            "last_loss": last[impl],
        }
    base = results[OPEN_CLIP]["samples_per_s"]
    for impl in impls:
        results[impl]["ratio"] = results[impl]["samples_per_s"] / base
        # each repeat times the implementations back to back: their ratio cancels slow drift
        results[impl]["paired_ratio"] = statistics.median(
            o / x for o, x in zip(block_medians[OPEN_CLIP], block_medians[impl])
        )
    ratio = results[ALIGN]["ratio"]
    wall = time.perf_counter() - t_start
    load_end = os.getloadavg()[0]
    vision_cfg, text_cfg = tower_cfgs(a)
    n_params = info[OPEN_CLIP]["params"]
    threads = info[OPEN_CLIP]["threads"]
    cmd = "python benchmarks/train_step.py" + (" " + shlex.join(argv) if argv else "")

    cut = "" if repeats_done == a.repeats else f"; time budget: {repeats_done} of {a.repeats} repeats"
    print()
    print(
        f"## Training step: align vs open_clip (CPU, batch {a.batch_size}, {repeats_done} x {a.steps} "
        f"timed steps each, interleaved, after {a.warmup} warm-up{cut})"
    )
    print()
    print("| implementation | median step ms | median samples/s | ratio |")
    print("|---|---:|---:|---:|")
    for impl in impls:
        r = results[impl]
        print(f"| {impl} | {r['median_step_ms']:.1f} | {r['samples_per_s']:.1f} | {r['ratio']:.3f} |")
    print()
    print(
        f"- paired estimate (median over repeats of the back-to-back block time ratio open_clip / align): "
        f"{results[ALIGN]['paired_ratio']:.3f}"
    )
    print(
        "- per-block median ms: "
        + "; ".join(f"{impl} {[round(x) for x in results[impl]['block_median_ms']]}" for impl in impls)
    )
    print(
        f"- towers: vision {vision_cfg}, text {text_cfg}, embed_dim {a.embed_dim}; "
        f"{n_params / 1e6:.2f} M parameters; AdamW lr {a.lr} wd {a.weight_decay}, grad clip {a.grad_clip}, "
        f"scheduler {a.scheduler}"
    )
    print(
        "- loss after the first step / all steps: "
        + "; ".join(f"{impl} {first[impl]:.6f} / {last[impl]:.6f}" for impl in impls)
    )
    print("- worker peak RSS MiB: " + ", ".join(f"{impl} {rss[impl]:.0f}" for impl in impls))
    print(
        f"- torch {torch.__version__}, open_clip {oc_version}, accelerate {acc_version}, "
        f"python {platform.python_version()}; CPUs {os.cpu_count()}, torch threads {threads}; "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"- wall time {wall:.0f} s; 1-min load average {load_start:.1f} at start, {load_end:.1f} at end "
        f"(this run adds about {threads}; more means other processes competed for the CPUs)"
    )
    print(f"- rerun: `{cmd}`")
    print(f"- target ratio >= 0.95: {'OK' if ratio >= 0.95 else 'BELOW TARGET'}")

    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {
                    "command": cmd,
                    "results": results,
                    "ratio": ratio,
                    "batch_size": a.batch_size,
                    "warmup": a.warmup,
                    "repeats": repeats_done,
                    "steps": a.steps,
                    "scheduler": a.scheduler,
                    "vision_cfg": vision_cfg,
                    "text_cfg": text_cfg,
                    "embed_dim": a.embed_dim,
                    "params": n_params,
                    "torch": torch.__version__,
                    "open_clip": oc_version,
                    "accelerate": acc_version,
                    "cpu_count": os.cpu_count(),
                    "torch_threads": threads,
                    "wall_s": wall,
                    "loadavg_start": load_start,
                    "loadavg_end": load_end,
                },
                indent=2,
            )
        )
        print(f"- results written to {a.json}")
    if profile:
        print(
            f"\n### cProfile of align.app.trainer.train_step, {a.profile_steps} steps "
            "(accelerate / align / importlib frames)\n"
        )
        print(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
