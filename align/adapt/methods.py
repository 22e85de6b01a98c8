"""The few-shot methods, each ``fit(task, x, y, seed) -> AdaptedClassifier`` on k-shot embeddings.

No method sees validation data: what the papers tune on a validation split is either fixed here
before any run (the step counts and learning rates below, stated once) or chosen on the k-shot set
itself (the probes' regularisation by cross-validation, Tip-Adapter's alpha / beta by
leave-one-out), as CLAP (Silva-Rodriguez et al., CVPR 2024) argues a fair comparison must.

* ``linear-probe``     logistic regression, C by stratified CV (``align.eval.linear_probe``).
* ``zs-probe``         the same linear layer started at the zero-shot classifier (``s * Wzs``, s the
                       model's temperature) and pulled back to it: CE + lambda * ||W - s Wzs||^2,
                       lambda by the same CV; L-BFGS on the convex objective, so the fit is the optimum.
* ``tip-adapter``      the k-shot cache (Zhang et al., ECCV 2022), alpha and beta by leave-one-out
                       accuracy on the k-shot set (each shot classified by the others' cache).
* ``tip-adapter-f``    its keys fine-tuned, each shot against the others' keys: AdamW lr 1e-3, eps 1e-4,
                       cosine, 100 full-batch steps.
* ``coop``             shared context (Zhou et al., IJCV 2022), started at the first template's own
                       words ("a photo of the number" -> 5 vectors; 4 random N(0, 0.02) vectors if the
                       template starts with the class): Adam lr 2e-3, cosine, 200 full-batch steps.
* ``coop-csc``         one context per class, same schedule.
* ``cocoop``           shared context plus a meta-net (D -> D/16 -> width, last layer zero so it starts
                       as CoOp's start) conditioned on each query (Zhou et al., CVPR 2022): Adam lr
                       2e-3, cosine, 100 steps of 8 random shots (the paper: batch 1). Every step
                       encodes 8 x C prompts and scoring N queries N x C, so with a pretrained text
                       tower it is the costly one (MiniLM: ~1 s a step on 2 cores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError
from align.eval.linear_probe import fit_linear_probe
from align.model.adapted import AdaptedClassifier, LinearHead, MetaNet, PromptHead, TipAdapterHead

LAMBDA_GRID = tuple(float(v) for v in 10.0 ** np.arange(-4, 3))  # 1e-4 ... 100
DEFAULT_LAMBDA = 1.0  # one shot: no fold to hold out, stay near the zero-shot classifier
# wider than the paper's [0, 3]: a space trained from scratch spreads its cosines far more than CLIP's
ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
BETAS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.5, 7.0)


@dataclass
class Task:
    """What every method may use: the model, which tower classifies what, the classes and their
    zero-shot classifier (prompt ensemble of the config's templates)."""

    model: nn.Module
    query: str
    prompt_modality: str
    classnames: list[str]
    templates: list[str] | dict[str, list[str]]
    zeroshot: torch.Tensor  # [C, D]
    scale: float  # the model's temperature exp(logit_scale), at most 100
    steps: dict[str, int] = field(default_factory=dict)  # method -> optimisation steps (tests shorten them)

    def head_kw(self, method: str, info: dict | None = None) -> dict:
        return {"method": method, "classnames": self.classnames, "query": self.query, "info": info or {}}


def zero_shot(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    """The baseline as a head: ``s x Wzs^T`` (no shots used)."""
    return LinearHead(task.scale * task.zeroshot, torch.zeros(len(task.classnames)), **task.head_kw("zero-shot"))


def linear_probe(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    weight, bias, record = fit_linear_probe(x.numpy(), y.numpy(), len(task.classnames), seed)
    return LinearHead(weight, bias, **task.head_kw("linear-probe", record))


def _zs_probe_fit(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = w0.clone().double().requires_grad_(True)
    b = torch.zeros(len(w0), dtype=torch.float64, requires_grad=True)
    xd, w0d = x.double(), w0.double()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xd @ w.T + b, y) + lam * (w - w0d).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def zs_probe(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    from sklearn.model_selection import StratifiedKFold

    w0 = task.scale * task.zeroshot
    counts = np.bincount(y.numpy(), minlength=len(task.classnames))
    n_folds = min(5, int(counts.min()))
    if n_folds < 2:
        lam, record = DEFAULT_LAMBDA, {"lambda": DEFAULT_LAMBDA, "cv": None, "reason": "1 example per class"}
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        scores = []
        for lam in LAMBDA_GRID:
            acc = []
            for tr, te in splitter.split(x.numpy(), y.numpy()):
                w, b = _zs_probe_fit(x[tr], y[tr], w0, lam)
                acc.append(float(((x[te] @ w.T + b).argmax(1) == y[te]).float().mean()))
            scores.append(float(np.mean(acc)))
        best = len(scores) - 1 - int(np.argmax(scores[::-1]))  # ties: the largest lambda, closest to zero-shot
        lam = LAMBDA_GRID[best]
        record = {"lambda": lam, "cv": {"folds": n_folds, "grid": list(LAMBDA_GRID), "accuracy": scores}}
    w, b = _zs_probe_fit(x, y, w0, lam)
    return LinearHead(w, b, **task.head_kw("zs-probe", record))


def _tip(task: Task, keys: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, method: str, info: dict):
    values = F.one_hot(y, len(task.classnames)).float()
    return TipAdapterHead(task.zeroshot, keys, values, alpha, beta, **task.head_kw(method, info))


def choose_alpha_beta(task: Task, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, dict]:
    """Leave-one-out on the k-shot set: each shot scored with the cache of all the others."""
    zs = 100.0 * x @ task.zeroshot.T
    cos = x @ x.T
    values = F.one_hot(y, len(task.classnames)).float()
    best, grid = (-1.0, 0.0, 0.0), []
    for alpha in ALPHAS:
        for beta in BETAS:
            affinity = torch.exp(-beta * (1 - cos))
            affinity.fill_diagonal_(0)  # the shot itself is out of its cache
            acc = float(((zs + alpha * affinity @ values).argmax(1) == y).float().mean())
            grid.append([alpha, beta, acc])
            if acc > best[0]:  # first best: the smallest alpha among equals (zero-shot when the cache cannot help)
                best = (acc, alpha, beta)
    return best[1], best[2], {"alpha": best[1], "beta": best[2], "loo_accuracy": best[0], "grid": grid}


def tip_adapter(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    alpha, beta, record = choose_alpha_beta(task, x, y)
    return _tip(task, x, y, alpha, beta, "tip-adapter", record)


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))


def loo_logits(head: TipAdapterHead, x: torch.Tensor) -> torch.Tensor:
    """Tip-Adapter logits of the cached shots themselves, each against the other shots' keys."""
    affinity = torch.exp(-head.beta * (1 - x @ F.normalize(head.keys, dim=-1).T))
    affinity = affinity * (1 - torch.eye(len(x), dtype=affinity.dtype))
    return head.scale * x @ head.zeroshot.T + head.alpha * affinity @ head.values


def tip_adapter_f(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    """Tip-Adapter-F's keys trained by cross-entropy on the shots, each shot scored against the
    others' keys (``loo_logits``): the paper trains on augmented views of the shots, which differ
    from the cached keys; on one fixed embedding per shot a shot's own key answers it (affinity 1),
    the loss is ~0 from the start and the keys would not move (measured: identical accuracy)."""
    alpha, beta, record = choose_alpha_beta(task, x, y)
    head = _tip(task, x, y, alpha, beta, "tip-adapter-f", record)
    steps = task.steps.get("tip-adapter-f", 100)
    opt = torch.optim.AdamW([head.keys], lr=1e-3, eps=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps))
    torch.manual_seed(seed)
    head.train()
    for _ in range(steps):
        loss = F.cross_entropy(loo_logits(head, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        head.keys.copy_(F.normalize(head.keys, dim=-1))
    head.info["steps"] = steps
    return head.eval()


def _first_template(task: Task) -> str:
    t = task.templates
    first = next(iter(t.values()))[0] if isinstance(t, dict) else t[0]
    return first.replace("{c}", "{}")


def _prompt_head(task: Task, method: str, seed: int, per_class: bool, meta: bool) -> PromptHead:
    from align.model.prompt_context import context_encoder

    template = _first_template(task)
    prefix, _, suffix = template.partition("{}") if "{}" in template else ("", "", ".")
    prefix = prefix.strip()
    probe = context_encoder(task.model, task.prompt_modality, 1)  # names the adapter when it cannot take context
    n_ctx = probe.count_tokens(prefix) if prefix else 4
    enc = context_encoder(task.model, task.prompt_modality, n_ctx, suffix)
    gen = torch.Generator().manual_seed(seed)
    if prefix:
        ctx = enc.words_init(prefix)[None]
        init = f"words of '{prefix}'"
    else:
        ctx = torch.randn(1, n_ctx, enc.width, generator=gen) * 0.02
        init = "N(0, 0.02)"
    if per_class:
        ctx = ctx.expand(len(task.classnames), -1, -1).clone()
    net = None
    if meta:
        dim = task.zeroshot.shape[1]
        net = MetaNet(dim, enc.width)
        torch.manual_seed(seed)
        net[0].reset_parameters()
        nn.init.zeros_(net[2].weight)
        nn.init.zeros_(net[2].bias)
    info = {"n_ctx": n_ctx, "init": init, "suffix": suffix, "class_specific": per_class}
    head = PromptHead(ctx, task.prompt_modality, suffix, net, task.scale, **task.head_kw(method, info))
    return head.bind(task.model)


def _train_prompt(task: Task, head: PromptHead, x, y, seed: int, steps: int, batch: int | None) -> PromptHead:
    for p in task.model.parameters():
        p.requires_grad_(False)
    params = [head.ctx] + ([] if head.meta is None else list(head.meta.parameters()))
    opt = torch.optim.Adam(params, lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps))
    gen = torch.Generator().manual_seed(seed)
    head.train()
    task.model.eval()  # the towers stay in eval mode (no dropout); only the context learns
    for _ in range(steps):
        rows = torch.randperm(len(x), generator=gen)[:batch] if batch and batch < len(x) else slice(None)
        loss = F.cross_entropy(head.logits(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    head.info["steps"] = steps
    return head.eval()


def coop(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    head = _prompt_head(task, "coop", seed, per_class=False, meta=False)
    return _train_prompt(task, head, x, y, seed, task.steps.get("coop", 200), None)


def coop_csc(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    head = _prompt_head(task, "coop-csc", seed, per_class=True, meta=False)
    return _train_prompt(task, head, x, y, seed, task.steps.get("coop-csc", 200), None)


def cocoop(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> AdaptedClassifier:
    head = _prompt_head(task, "cocoop", seed, per_class=False, meta=True)
    return _train_prompt(task, head, x, y, seed, task.steps.get("cocoop", 100), 8)


METHODS: dict[str, Callable[[Task, torch.Tensor, torch.Tensor, int], AdaptedClassifier]] = {
    "linear-probe": linear_probe,
    "zs-probe": zs_probe,
    "tip-adapter": tip_adapter,
    "tip-adapter-f": tip_adapter_f,
    "coop": coop,
    "coop-csc": coop_csc,
    "cocoop": cocoop,
}
PROMPT_METHODS = ("coop", "coop-csc", "cocoop")


class MethodError(AlignError, ValueError):
    """An unknown method name."""


def check_methods(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise MethodError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    return list(names)
