"""Zero-shot classification metrics and class-prompt embeddings, CLIP_benchmark's protocol
(clip_benchmark/metrics/zeroshot_classification.py, v1.6.2).

Why: reported numbers must be CLIP_benchmark's numbers. It reports ``acc1``, ``acc5`` (top-k over
logits via ``torch.topk``) and ``mean_per_class_recall`` (sklearn's ``balanced_accuracy_score`` of
``argmax`` predictions: mean recall over the classes present in the labels). Differences, on
purpose: top-k is ``None`` plus a reason when there are fewer than k classes (CLIP_benchmark
writes nan; it must never read as 1.0), and ties are broken by the lower class index (the order
of ``torch.argmax`` and of a stable sort) unless ``ties="topk"`` asks for ``torch.topk``'s own,
implementation-defined, choice. Scale (CLIP's ×100) does not change any of these metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Templates = Sequence[str] | Mapping[str, Sequence[str]]


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, k: int, ties: str = "index", k_max: int | None = None
) -> torch.Tensor:
    """Bool [N]: the true class is among the k best. ``index`` ties: a class beats an equal-scored
    one with a higher index, so the true class's rank is 1 + #(higher) + #(equal, lower index).
    ``topk``: the first k of ``torch.topk(logits, k_max)`` — CLIP_benchmark takes one top-max(k)
    and slices it, and with ties that can differ from ``torch.topk(logits, k)``."""
    if ties == "topk":
        idx = torch.topk(logits, k if k_max is None else k_max, dim=1, largest=True, sorted=True)[1]
        return (idx[:, :k] == labels[:, None]).any(1)
    if ties != "index":
        raise ValueError(f"ties must be 'index' or 'topk', got {ties!r}")
    s_true = logits.gather(1, labels[:, None])
    cols = torch.arange(logits.shape[1])[None]
    rank = (logits > s_true).sum(1) + ((logits == s_true) & (cols < labels[:, None])).sum(1) + 1
    return rank <= k


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted (sklearn's layout with labels=range(C))."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


def zeroshot_classification_metrics(
    logits: Any, labels: Any, ks: Sequence[int] = (1, 5), classnames: Sequence[str] | None = None, ties: str = "index"
) -> dict[str, Any]:
    """Metrics from logits [N, C] (any monotone scale of cosine scores) and integer labels [N].

    Returns ``top{k}`` (None when C < k, with the reason under ``undefined``),
    ``mean_per_class_recall`` (balanced accuracy over the classes present in ``labels``),
    ``per_class_recall`` (None for absent classes), ``confusion_matrix`` and counts."""
    logits = _as_tensor(logits).float()
    labels = _as_tensor(labels).long()
    if logits.ndim != 2 or labels.ndim != 1 or len(labels) != len(logits):
        raise ValueError(f"expected logits [N, C] and labels [N]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    n, c = logits.shape
    if classnames is not None and len(classnames) != c:
        raise ValueError(f"{len(classnames)} class names for {c} logit columns")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}); got range [{int(labels.min())}, {int(labels.max())}]")
    out: dict[str, Any] = {"n": int(n), "n_classes": int(c), "undefined": {}}
    k_max = max([k for k in ks if k <= c], default=1)
    for k in ks:
        if c < k:
            out[f"top{k}"] = None
            out["undefined"][f"top{k}"] = f"top-{k} accuracy is undefined with {c} classes (< {k})"
        else:
            out[f"top{k}"] = float(topk_correct(logits, labels, k, ties, k_max).double().mean()) if n else float("nan")
    pred = logits.argmax(1).numpy()  # first maximal index on ties, as CLIP_benchmark's argmax
    cm = confusion_matrix(pred, labels.numpy(), c)
    support = cm.sum(1)
    present = support > 0
    recall = np.diag(cm)[present] / support[present]
    out["mean_per_class_recall"] = float(recall.mean()) if present.any() else float("nan")
    out["per_class_recall"] = [float(cm[i, i] / support[i]) if present[i] else None for i in range(c)]
    out["n_classes_present"] = int(present.sum())
    out["confusion_matrix"] = cm.tolist()
    if classnames is not None:
        out["classnames"] = list(classnames)
    return out


def check_unique(classnames: Sequence[str]) -> None:
    """Duplicated class names would silently merge or split classes: refuse them, by name."""
    seen, dupes = set(), []
    for name in classnames:
        if name in seen and name not in dupes:
            dupes.append(name)
        seen.add(name)
    if dupes:
        raise ValueError(f"class names must be unique; duplicated: {dupes}")


def class_prompts(classnames: Sequence[str], templates: Templates) -> list[list[str]]:
    """Prompts per class. Shared templates use ``{c}`` (CLIP_benchmark) or ``{}`` (open_clip) for the
    class name; a mapping gives each class its own prompts (CuPL)."""
    check_unique(classnames)
    if isinstance(templates, str):
        raise TypeError("templates must be a list of templates or a dict class -> prompts, not one string")
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise ValueError(f"class-specific prompts missing for classes: {missing}")
        prompts = [list(templates[c]) for c in classnames]
    else:
        prompts = []
        for name in classnames:
            row = []
            for t in templates:
                try:
                    row.append(t.format(name, c=name))
                except (KeyError, IndexError) as e:
                    raise ValueError(f"template {t!r}: use '{{c}}' or '{{}}' for the class name ({e!r})") from None
            prompts.append(row)
    empty = [c for c, p in zip(classnames, prompts) if not p]
    if empty:
        raise ValueError(f"no prompts for classes: {empty}")
    return prompts


@torch.no_grad()
def build_class_embeddings(
    classnames: Sequence[str],
    templates: Templates,
    encode_texts: Callable[[list[str]], torch.Tensor],
    batch_size: int = 256,
) -> torch.Tensor:
    """[C, D] float32 class embeddings: per class, the mean of its L2-normalised prompt embeddings,
    renormalised (CLIP_benchmark's ``zero_shot_classifier``, transposed). ``encode_texts`` maps a
    list of strings to [n, D], so this works with any model; prompts are encoded in batches
    across classes."""
    prompts = class_prompts(classnames, templates)
    flat = [p for row in prompts for p in row]
    embs = torch.cat(
        [_as_tensor(encode_texts(flat[i : i + batch_size])).float() for i in range(0, len(flat), batch_size)]
    )
    if len(embs) != len(flat):
        raise ValueError(f"encode_texts returned {len(embs)} rows for {len(flat)} prompts")
    embs = F.normalize(embs, dim=-1)
    out, start = [], 0
    for row in prompts:
        out.append(F.normalize(embs[start : start + len(row)].mean(0), dim=-1))
        start += len(row)
    return torch.stack(out)


def shipped_templates() -> dict[str, Path]:
    """Template sets shipped in ``configs/templates`` (installed as ``align.configs``), by name."""
    from importlib import resources

    folder = Path(str(resources.files("align.configs").joinpath("templates")))
    return {p.stem: p for p in sorted(folder.glob("*.txt"))}


def load_templates(path: str | Path) -> list[str] | dict[str, list[str]]:
    """Templates from a file: ``.json`` holding a list of templates or a dict class -> prompts
    (CuPL files), otherwise text with one template per line (blank lines skipped, ends stripped)."""
    path = Path(path)
    if not path.exists() and str(path) in shipped_templates():  # a shipped set by name, e.g. "digits"
        path = shipped_templates()[str(path)]
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return data
        if isinstance(data, dict) and all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()
        ):
            return {str(k): list(v) for k, v in data.items()}
        raise ValueError(f"{path}: expected a JSON list of strings or an object class -> list of strings")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    templates = [ln for ln in lines if ln]
    if not templates:
        raise ValueError(f"{path}: no templates")
    return templates
