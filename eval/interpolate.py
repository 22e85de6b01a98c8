"""``align interpolate --from A --to B --alphas 0,0.1,...,1 --config E1 [--config E2]``: WiSE-FT's
curve for the user. Each interpolation of the two checkpoints' weights (``align/model/interpolate.py``;
a LoRA run's adapters merged into its base first) is written as a checkpoint folder ``<out>/alpha-<a>/``
(loadable by every align command) and evaluated on every eval config given (each one's eval
section: zero-shot, retrieval, or both); the results go to ``<out>/interpolation.json``, a markdown
table and one plot of each set's metrics against alpha, alpha 0 and 1 being the two checkpoints themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from align.errors import AlignError


class InterpolationError(AlignError, ValueError):
    """The interpolation cannot be made as asked; the message says why."""


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise InterpolationError(f"--alphas: {text!r} is not a comma-separated list of numbers") from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if not alphas or bad:
        raise InterpolationError(f"--alphas: give numbers in [0, 1], e.g. 0,0.25,0.5,0.75,1 (got {text!r})")
    return alphas


def run_interpolation(
    source: str | Path, target: str | Path, alphas: Sequence[float], configs: Sequence[str | Path], out: str | Path
) -> dict[str, Any]:
    """Write and evaluate every interpolation; returns ``{"alphas", "sets": {config: [metrics per
    alpha]}, "checkpoints", "table", "plot"}`` and writes them under ``out``."""
    import json

    import torch

    from align.eval.control import headline, load_eval_section
    from align.eval.runner import evaluate
    from align.io.atomic import write_atomic
    from align.model.checkpoint import resolve_checkpoint, save_checkpoint, verify_files
    from align.model.interpolate import ArchitectureMismatch, check_same_architecture, interpolate

    if not configs:
        raise InterpolationError("--config: give at least one eval config (a YAML with an eval section)")
    ckpts = [resolve_checkpoint(source), resolve_checkpoint(target)]
    for c in ckpts:
        verify_files(c, ["model.safetensors", "config.yaml"])
    (_, _, from_weights), (model, cfg, to_weights) = (_plain_weights(c) for c in ckpts)
    try:
        check_same_architecture(from_weights, to_weights, names=(f"--from {ckpts[0]}", f"--to {ckpts[1]}"))
    except ArchitectureMismatch as e:
        raise InterpolationError(str(e)) from None
    weights = [from_weights, to_weights]
    sections = {str(c): load_eval_section(c) for c in configs}
    out = Path(out)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sections}
    written = []
    for alpha in alphas:
        state = interpolate(*weights, alpha)
        with torch.no_grad():
            model.load_state_dict(state)
        written.append(str(save_checkpoint(out, 0, model, cfg, name=f"alpha-{alpha:.2f}", update_latest=False)))
        for name, ecfg in sections.items():
            results[name].append(headline(evaluate(model, ecfg)))
    table = _table(alphas, results)
    record = {
        "from": str(ckpts[0]),
        "to": str(ckpts[1]),
        "alphas": list(alphas),
        "sets": results,
        "checkpoints": written,
    }
    write_atomic(out / "interpolation.json", json.dumps(record, indent=2))
    write_atomic(out / "interpolation.md", table + "\n")
    record["table"] = table
    record["plot"] = str(_plot(alphas, results, out / "interpolation.png"))
    return record


def _plain_weights(ckpt: Path):
    """The checkpoint as a plain model (a LoRA run's adapters merged into its verified base first,
    as ``align lora merge`` does), its config, and its weights by name."""
    from align.model.checkpoint import load_model
    from align.model.lora import lora_modalities
    from align.model.lora_merge import merged_model

    model, cfg = load_model(ckpt)
    if lora_modalities(cfg.model):
        model, cfg = merged_model(model, cfg)
    return model, cfg, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # not the live tensors


def _table(alphas: Sequence[float], results: dict[str, list[dict[str, float]]]) -> str:
    cols = [(name, key) for name, rows in results.items() for key in rows[0]]
    head = "| alpha | " + " | ".join(f"{Path(n).stem}: {k}" for n, k in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for i, a in enumerate(alphas):
        lines.append(f"| {a:.2f} | " + " | ".join(f"{results[n][i][k]:.4f}" for n, k in cols) + " |")
    return "\n".join(lines)


def _plot(alphas: Sequence[float], results: dict[str, list[dict[str, float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rows in results.items():
        for key in rows[0]:
            ax.plot(alphas, [r[key] for r in rows], marker="o", label=f"{Path(name).stem}: {key}")
    ax.set_xlabel("alpha (0 = --from, 1 = --to)")
    ax.set_ylabel("metric")
    ax.set_title("weight-space interpolation (WiSE-FT)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
