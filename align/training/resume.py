"""Resuming a run: from the newest checkpoint that verifies, with the run's records put back.

The model, optimizer and data order already resume exactly (``align/app/trainer.py``); these are the
records around them. A killed run logged steps past its last checkpoint, which the resumed run
logs again, so the log is cut back to the resumed step. The skipped-sample count and the best
eval score live in the training state, so a resumed run counts on and keeps the same
``checkpoints/best`` as an uninterrupted one. Temporary files a kill left behind are removed at
the start of a run, which is safe because the run holds the folder's lock (``align/training/runlock.py``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from align.io.atomic import write_atomic
from align.model.checkpoint import CheckpointError, load_training_state, load_weights, step_folders


def resume_candidates(root: Path, say: Callable[[str], None] = print) -> list[Path]:
    """Where to resume from, best first: the checkpoint ``latest`` names, then the ``step-N``
    folders before it, newest first. Folders past ``latest`` are left out: they belong to an
    earlier, longer run in the same folder (``latest`` is written right after each checkpoint)."""
    folders = step_folders(root)
    pointer = root / "latest"
    if not pointer.is_file():
        return [folder for _, folder in folders]
    name = pointer.read_text(errors="replace").strip()
    target = root / name
    if not (target.is_dir() and name and "/" not in name):
        say(f"resume: {pointer} names '{name}', which is not a checkpoint folder; trying the step-* folders")
        return [folder for _, folder in folders]
    limit = next((step for step, folder in folders if folder == target), None)
    return [target] + [folder for step, folder in folders if folder != target and (limit is None or step < limit)]


def restore_newest_good(
    ckpt_root: str | Path, model: torch.nn.Module, say: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any]]:
    """Load weights into ``model`` from the newest checkpoint (see :func:`resume_candidates`) whose
    files verify and whose numbers are finite; return it and its training state. Damaged ones are
    skipped, saying which and why; only when none is good does this fail, listing each."""
    root = Path(ckpt_root)
    candidates = resume_candidates(root, say)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint to resume from: {root} has no step-* folders")
    problems = []
    for folder in candidates:
        try:
            state = load_training_state(folder)
            load_weights(model, folder)
        except CheckpointError as err:
            problems.append(f"{folder.name}: {err}")
            say(f"resume: skipping checkpoint {folder}: {err}")
            continue
        return folder, state
    raise CheckpointError(f"no good checkpoint to resume from in {root}: " + "; ".join(problems))


def trim_log(log_path: Path, step: int) -> int:
    """Drop ``train_log.jsonl`` lines past ``step`` (the killed run's steps after its last
    checkpoint, about to be run and logged again) and a torn last line; rewritten atomically.
    Returns the number of lines dropped."""
    if not log_path.exists():
        return 0
    kept, dropped = [], 0
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = int(record["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_atomic(log_path, "".join(line + "\n" for line in kept))  # keeps the log's mode
    return dropped


def _is_leftover(name: str, in_checkpoints: bool) -> bool:
    """Names only our own temp writes use: ``.<name>.tmp-*`` checkpoint folders (save_checkpoint),
    ``.latest.*`` pointer files, ``.train_log.jsonl.*`` (trim_log), ``.lock.json.*`` (runlock)."""
    if in_checkpoints:
        return name.startswith(".") and (".tmp-" in name or name.startswith(".latest."))
    return name.startswith((".train_log.jsonl.", ".lock.json."))


def clean_leftovers(output_dir: str | Path) -> list[Path]:
    """Remove temporary files and folders an interrupted run left behind; returns what went.
    Only call while holding the run lock: otherwise they may be another run's writes in progress."""
    out = Path(output_dir)
    removed = []
    for folder, in_checkpoints in ((out, False), (out / "checkpoints", True)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not _is_leftover(path.name, in_checkpoints):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def set_aside_previous_run(output_dir: str | Path) -> Path | None:
    """Before a fresh (not resumed) run: move an earlier run's checkpoints folder to
    ``checkpoints-previous-<UTC time>`` so that none of its step folders is mistaken for this run's
    (``--resume``'s fallback to the newest good checkpoint, ``keep_checkpoints`` pruning, ``align
    eval --checkpoint RUN``) and nothing is deleted. Returns where they went, or None. Only call
    while holding the run lock."""
    import time

    root = Path(output_dir) / "checkpoints"
    if not root.is_dir() or not any(root.iterdir()):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = root.with_name(f"checkpoints-previous-{stamp}")
    n = 1
    while target.exists():  # two fresh runs within one second
        n += 1
        target = root.with_name(f"checkpoints-previous-{stamp}-{n}")
    root.rename(target)
    return target


def _best_value_from_log(log_path: Path, step: int, metric: str) -> float | None:
    if not log_path.exists():
        return None
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step") == step and f"eval/{metric}" in record:
            return float(record[f"eval/{metric}"])
    return None


def restored_best(
    state: dict[str, Any], ckpt_root: Path, log_path: Path, metric: str | None, step: int
) -> tuple[int, float] | None:
    """The best (step, value) as of the resumed step: from the resumed training state; for a
    checkpoint written before it stored one, from ``checkpoints/best`` (its step; the value from
    the eval line of that step in the log) when that is not from past the resumed step."""
    if not metric:
        return None
    if "best" in state:  # the value of another metric (train.best_metric changed) compares with nothing
        best = state["best"]
        return (
            None if best is None or best.get("metric", metric) != metric else (int(best["step"]), float(best["value"]))
        )
    best_dir = ckpt_root / "best"
    if not (best_dir / "training_state.pt").is_file():
        return None
    try:
        best_state = load_training_state(best_dir)
    except CheckpointError:
        return None
    if (
        best_state.get("best")
        and best_state["best"].get("metric", metric) == metric
        and int(best_state["best"]["step"]) <= step
    ):
        return int(best_state["best"]["step"]), float(best_state["best"]["value"])
    best_step = int(best_state["step"])
    value = _best_value_from_log(log_path, best_step, metric) if best_step <= step else None
    return None if value is None else (best_step, value)
