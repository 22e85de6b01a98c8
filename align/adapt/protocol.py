"""``align adapt``: every method on the same seeded k-shot draws, over shots and seeds.

The few-shot pool is the run's training split (``data.train``), the test set its eval split
(``eval.data``), the classes, prompts and the modality classified are its ``eval.zeroshot``
section: nothing else is read, and no validation data is used (``align.adapt.methods`` says
what each method fixes a priori and what it chooses on the k-shot set). Embeddings are computed
once: the test split and the union of every seed's largest draw (draws are nested over shots).

With ``base_classes`` (CoCoOp's base-to-novel protocol) the methods see shots of the base classes
only; base accuracy is over the base classes' test rows among the base classes, novel accuracy
over the other classes' rows among those classes, and their harmonic mean. A probe or a class-specific
context has no weights for a class it never saw: its novel entry is null with that reason;
Tip-Adapter's cache holds no novel shots, so on novel classes it is its zero-shot part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from align.adapt.methods import METHODS, Task, check_methods, zero_shot
from align.adapt.shots import check_shots, draw_shots
from align.errors import AlignError, ConfigError
from align.model.adapted import PromptHead, TipAdapterHead

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


class AdaptError(AlignError, ValueError):
    """The checkpoint or config cannot be adapted as asked; the message names what is missing."""


@dataclass
class Pool:
    """Embedded rows: the k-shot pool (``rows`` of the training table) and the test split."""

    train_labels: np.ndarray  # every training row's class id
    train_emb: dict[int, torch.Tensor]  # training row -> embedding, for the rows any draw takes
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_table: Any = None  # the loaded training table (the draws' rows are embedded from it)

    def shots(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.train_emb[int(r)] for r in rows])
        return x, torch.as_tensor(self.train_labels[rows], dtype=torch.long)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = logits.argmax(1)
    recalls = [float((pred[y == c] == c).float().mean()) for c in torch.unique(y)]
    return {"top1": float((pred == y).float().mean()), "mean_per_class_recall": float(np.mean(recalls))}


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def novel_logits(head, novel: Task, x: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """Logits over the novel classes from a head fitted on the base classes, or (None, why)."""
    if isinstance(head, PromptHead):
        if head.class_specific:
            return None, "one learned context per base class: none exists for a novel class"
        return head.logits(x, names=novel.classnames), None
    if isinstance(head, TipAdapterHead):  # no novel shots in the cache: its zero-shot part alone
        return 100.0 * x @ novel.zeroshot.T, None
    if head.method == "zero-shot":
        return novel.scale * x @ novel.zeroshot.T, None
    return None, f"{head.method} has weights for the base classes only"


def subtask(task: Task, classes: Sequence[int]) -> Task:
    names = [task.classnames[c] for c in classes]
    return Task(task.model, task.query, task.prompt_modality, names, task.templates, task.zeroshot[list(classes)],
                task.scale, task.steps)  # fmt: skip


def _summary(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "std": None, "runs": values}
    std = float(np.std(got, ddof=1)) if len(got) > 1 else 0.0  # sample std over seeds
    return {"mean": float(np.mean(got)), "std": std, "runs": values}


def run_protocol(
    task: Task,
    pool: Pool,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: int = 3,
    methods: Sequence[str] | None = None,
    base_classes: Sequence[int] | None = None,
    keep_heads: bool = False,
    log=print,
) -> dict[str, Any]:
    """Fit and score every method on every (shots, seed) draw; returns the report's results part
    (``heads``: the last seed-0 heads of the largest shot count, when ``keep_heads``)."""
    methods = check_methods(list(methods or METHODS))
    shots = sorted(set(int(k) for k in shots))
    n = len(task.classnames)
    classes = list(range(n)) if base_classes is None else list(base_classes)
    check_shots(shots, pool.train_labels, task.classnames, classes)
    with torch.no_grad():
        zs_full = accuracy(zero_shot(task, None, None, 0).logits(pool.test_x), pool.test_y)
    out: dict[str, Any] = {"zero_shot": zs_full, "shots": shots, "seeds": seeds, "methods": {}, "seconds": {}}
    heads: dict[str, Any] = {}
    if base_classes is not None:
        novel_classes = [c for c in range(n) if c not in classes]
        base_task, novel_task = subtask(task, classes), subtask(task, novel_classes)
        split = {}
        for name, group in (("base", classes), ("novel", novel_classes)):
            mask = torch.isin(pool.test_y, torch.as_tensor(group))
            remap = torch.full((n,), -1, dtype=torch.long)
            remap[torch.as_tensor(group)] = torch.arange(len(group))
            split[name] = (pool.test_x[mask], remap[pool.test_y[mask]])
        with torch.no_grad():
            zb = accuracy(zero_shot(base_task, None, None, 0).logits(split["base"][0]), split["base"][1])["top1"]
            zn = accuracy(zero_shot(novel_task, None, None, 0).logits(split["novel"][0]), split["novel"][1])["top1"]
        out["base_to_novel"] = {
            "base_classes": base_task.classnames,
            "novel_classes": novel_task.classnames,
            "zero_shot": {"base": zb, "novel": zn, "hm": harmonic_mean(zb, zn)},
        }
        fit_task = base_task
    else:
        fit_task = task
    for method in methods:
        t0 = time.perf_counter()
        result: dict[str, Any] = {}
        for k in shots:
            runs: dict[str, list] = {"top1": [], "mean_per_class_recall": [], "base": [], "novel": [], "hm": []}
            notes: list[dict] = []
            for seed in range(seeds):
                rows = draw_shots(pool.train_labels, classes, k, seed)
                x, y = pool.shots(rows)
                if base_classes is not None:
                    y = torch.as_tensor([classes.index(int(v)) for v in y], dtype=torch.long)
                head = METHODS[method](fit_task, x, y, seed)
                notes.append({k_: v for k_, v in head.info.items() if k_ != "grid"})
                with torch.no_grad():
                    if base_classes is None:
                        got = accuracy(head.logits(pool.test_x), pool.test_y)
                        runs["top1"].append(got["top1"])
                        runs["mean_per_class_recall"].append(got["mean_per_class_recall"])
                    else:
                        b = accuracy(head.logits(split["base"][0]), split["base"][1])["top1"]
                        logits, why = novel_logits(head, novel_task, split["novel"][0])
                        nv = None if logits is None else accuracy(logits, split["novel"][1])["top1"]
                        runs["base"].append(b)
                        runs["novel"].append(nv)
                        runs["hm"].append(harmonic_mean(b, nv))
                        if why:
                            notes[-1]["novel"] = why
                if keep_heads and seed == 0 and k == shots[-1]:
                    heads[method] = head
            result[str(k)] = {key: _summary(v) for key, v in runs.items() if v}
            result[str(k)]["fitted"] = notes
            main = result[str(k)].get("top1") or result[str(k)]["hm"]
            log(f"  {method:<14} {k:>3}-shot  {_fmt(main)}")
        out["methods"][method] = result
        out["seconds"][method] = time.perf_counter() - t0
    if keep_heads:
        out["heads"] = heads
    return out


def _fmt(s: dict[str, Any]) -> str:
    return "n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def check_query(model, cfg, query: str, where: str) -> None:
    """A probe or adapter needs the modality it classifies in the checkpoint (and in the data)."""
    if query not in model.adapters:
        raise AdaptError(
            f"{where}: the checkpoint has no modality '{query}' to classify (it has {list(model.adapters)})"
        )
    train = cfg.data.train
    if train is None:
        raise ConfigError("config key 'data.train': align adapt draws its shots from the training split; none is set")
    if query not in train.columns:
        raise ConfigError(
            f"config key 'data.train.columns': no '{query}' column to draw shots from (has {sorted(train.columns)})"
        )
    if not train.label_column:
        raise ConfigError("config key 'data.train.label_column': few-shot draws need labelled training rows")
