"""The few-shot report as a person reads it: a markdown table (mean ± std over seeds) and a plot of
accuracy against shots for every method, zero-shot drawn as the baseline line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align.eval.plots import _plt, save_figure
from align.io.atomic import write_atomic


def _cell(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _where(d: dict[str, Any]) -> str:
    """'files train where take < 5': the split and the filter that made it (a 'train' split filtered
    to held-out takes must not read as the training rows)."""
    text = f"{d['source']} {d['split']}"
    for col, tests in (d.get("where") or {}).items():
        text += f" where {col} {tests}"
    return text


def markdown(report: dict[str, Any]) -> str:
    shots = report["shots"]
    b2n = "base_to_novel" in report
    lines = [
        f"# Few-shot: {report['query']} -> {len(report['classnames'])} classes ({report['checkpoint']})",
        "",
        f"Shots from {_where(report['data']['train'])}, test {_where(report['data']['test'])} "
        f"({report['data']['test']['rows']} rows); "
        f"mean ± sample std over {report['seeds']} seed(s), the same draws for every method.",
        "",
    ]
    if not b2n:
        lines += [f"Zero-shot top-1: {report['zero_shot']['top1']:.3f}", ""]
        lines += ["| method | " + " | ".join(f"{k}-shot" for k in shots) + " | seconds |"]
        lines += ["|---|" + "---|" * (len(shots) + 1)]
        for method, res in report["methods"].items():
            cells = [_cell(res[str(k)].get("top1")) for k in shots]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {report['seconds'][method]:.1f} |")
    else:
        bn = report["base_to_novel"]
        z = bn["zero_shot"]
        lines += [
            f"Base classes {bn['base_classes']}, novel {bn['novel_classes']}; zero-shot base {z['base']:.3f}, "
            f"novel {z['novel']:.3f}, HM {z['hm']:.3f}.",
            "",
            "| method | shots | base | novel | HM |",
            "|---|---|---|---|---|",
        ]
        for method, res in report["methods"].items():
            for k in shots:
                r = res[str(k)]
                lines.append(f"| {method} | {k} | {_cell(r['base'])} | {_cell(r['novel'])} | {_cell(r['hm'])} |")
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    return write_atomic(Path(path), markdown(report))


def plot_shots(report: dict[str, Any], path: str | Path) -> Path:
    """Top-1 (or, base-to-novel, the harmonic mean) against shots, one line per method with its std
    as error bars, zero-shot as a dashed horizontal line."""
    plt = _plt()
    shots = report["shots"]
    b2n = "base_to_novel" in report
    key = "hm" if b2n else "top1"
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    for method, res in report["methods"].items():
        pts = [(k, res[str(k)][key]) for k in shots if res[str(k)][key]["mean"] is not None]
        if pts:
            ax.errorbar(
                [k for k, _ in pts], [s["mean"] for _, s in pts], yerr=[s["std"] for _, s in pts],
                marker="o", ms=3, capsize=2, lw=1.2, label=method,
            )  # fmt: skip
    zs = report["base_to_novel"]["zero_shot"]["hm"] if b2n else report["zero_shot"]["top1"]
    ax.axhline(zs, color="k", ls="--", lw=1, label="zero-shot")
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("base-novel harmonic mean" if b2n else "top-1 accuracy")
    ax.set_title(f"few-shot {report['query']} ({len(report['classnames'])} classes, {report['seeds']} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
