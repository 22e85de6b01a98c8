"""Exporting a trained model for use outside align (``align export``).

- ``open_clip``: an image+text model whose towers are open_clip towers becomes an open_clip
  ``CustomTextCLIP``: ``<name>.json`` (the model config, for ``open_clip.add_model_config``),
  ``open_clip_model.safetensors`` (for ``create_model_and_transforms(name, pretrained=FILE)``) and
  ``open_clip_config.json`` (for ``create_model_and_transforms("local-dir:" + DIR)``). align's
  per-modality linear head after each tower is folded into the tower's own projection (``visual.proj``
  / ``text.text_projection``: one matrix product), so open_clip's embeddings equal align's (tested
  to 1e-5). An MLP head, an HF or other tower is not representable and is refused, naming it.
- ``onnx``: each tower + head as one ONNX graph (``torch.onnx.export``) from a collated batch of real
  inputs, checked against torch by onnxruntime on those inputs (cosine >= 0.9999 per row). Towers
  whose batches are not tensors (a graph's PyG batch) are refused, naming the modality.
- ``hf``: every Hugging Face tower by ``save_pretrained`` (with its tokenizer), its head beside it.
- ``align``: the checkpoint's verified files copied with a model card (README.md: config, data,
  eval reports), loadable with ``align.load_model``.

A LoRA model is merged first (``align.model.lora.merge_lora``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from align.errors import AlignError


class ExportError(AlignError, ValueError):
    """The model cannot be exported as asked; the message names the tower or head that differs."""


def _tower_cfg(adapter, kind: str) -> dict[str, Any]:
    opts = adapter.options
    if kind == "image":
        if getattr(opts, "model", None):
            import open_clip

            return dict(open_clip.get_model_config(opts.model)["vision_cfg"])
        return dict(opts.vision_cfg)
    if getattr(adapter, "kind", None) != "open_clip":
        raise ExportError(
            "the text tower is a Hugging Face encoder (text.options.hf_model): open_clip's CLIP cannot hold it; "
            "export it with --format onnx, or its tower with transformers' save_pretrained"
        )
    if getattr(opts, "model", None):
        import open_clip

        return dict(open_clip.get_model_config(opts.model)["text_cfg"])
    return dict(opts.text_cfg)


def _folded(projection: torch.Tensor, head: torch.nn.Module, where: str) -> torch.Tensor:
    """``projection`` [width, out] followed by align's head, as one [width, embed_dim] matrix."""
    if isinstance(head, torch.nn.Identity):
        return projection.detach().clone()
    if isinstance(head, torch.nn.Linear) and head.bias is None:
        return projection.detach() @ head.weight.detach().T
    raise ExportError(
        f"model.modalities.{where}.head is {type(head).__name__}: open_clip's CLIP projects each tower with "
        f"one matrix, so only a 'linear' (bias-free) or 'identity' head can be folded into it"
    )


def open_clip_state(model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(open_clip model config, state dict) of an align image+text model of open_clip towers."""
    for mod in ("image", "text"):
        if mod not in model.adapters:
            raise ExportError(f"open_clip export needs an image and a text tower; the model has {model.modalities}")
    image, text = model.adapters["image"], model.adapters["text"]
    cfg = {
        "embed_dim": int(model.cfg.embed_dim),
        "vision_cfg": _tower_cfg(image, "image"),
        "text_cfg": _tower_cfg(text, "text"),
        "custom_text": True,
    }
    state: dict[str, torch.Tensor] = {}
    for name, value in image.tower.state_dict().items():
        state[f"visual.{name}"] = value
    for name, value in text.tower.state_dict().items():
        state[f"text.{name}"] = value
    if getattr(image.tower, "proj", None) is None or not isinstance(image.tower.proj, torch.nn.Parameter):
        raise ExportError("the image tower has no projection matrix (visual.proj) to fold its head into")
    state["visual.proj"] = _folded(image.tower.proj, model.heads["image"], "image")
    proj = getattr(text.tower, "text_projection", None)
    if isinstance(proj, torch.nn.Parameter):
        state["text.text_projection"] = _folded(proj, model.heads["text"], "text")
    elif isinstance(proj, torch.nn.Linear):
        head = model.heads["text"]
        weight = proj.weight.detach()
        identity = isinstance(head, torch.nn.Identity)
        state["text.text_projection.weight"] = weight if identity else _folded(weight.T, head, "text").T
        if proj.bias is not None:
            state["text.text_projection.bias"] = (
                proj.bias.detach() if isinstance(head, torch.nn.Identity) else head.weight.detach() @ proj.bias.detach()
            )
    else:
        raise ExportError("the text tower has no text_projection to fold its head into")
    state["logit_scale"] = model.logit_scale.detach().reshape(())
    if model.logit_bias is not None:
        state["logit_bias"] = model.logit_bias.detach().reshape(())
        cfg["init_logit_bias"] = float(model.logit_bias)
    return cfg, {k: v.detach().contiguous().cpu() for k, v in state.items()}


def export_open_clip(model, out: str | Path, name: str = "align-export") -> dict[str, str]:
    """Write the open_clip files (see the module docstring); returns their paths."""
    from safetensors.torch import save_file

    from align.io.atomic import write_atomic

    cfg, state = open_clip_state(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "open_clip_model.safetensors"
    save_file(state, str(weights))
    write_atomic(out / f"{name}.json", json.dumps(cfg, indent=1))
    image = model.adapters["image"]
    preprocess = {"size": int(image.image_size), "mean": list(image.mean), "std": list(image.std)}
    write_atomic(out / "open_clip_config.json", json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=1))
    return {"config": str(out / f"{name}.json"), "weights": str(weights), "local_dir": str(out)}


def export_onnx(model, modality: str, batch, path: str | Path) -> dict[str, Any]:
    """One tower + head as ONNX at ``path``, checked by onnxruntime against torch on ``batch``."""
    from align.extras import require_extra

    require_extra("export", ("onnx", "onnxruntime"), "align export --format onnx")

    inputs = batch if isinstance(batch, dict) else {"input": batch}
    if not all(isinstance(v, torch.Tensor) for v in inputs.values()):
        raise ExportError(
            f"the {modality} tower's batches are {type(batch).__name__}, not tensors: ONNX graphs take tensors"
        )
    names = list(inputs)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args):
            x = dict(zip(names, args)) if isinstance(batch, dict) else args[0]
            return self.model.encode(modality, x)

    model.eval()
    args = tuple(inputs[n] for n in names)
    # nn.MultiheadAttention's inference fast path is one fused op ONNX has no translation for
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _export_checked(Encoder(), args, names, inputs, path, modality)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _export_checked(encoder, args, names, inputs, path, modality: str) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    with torch.no_grad():
        expected = encoder(*args).numpy()
        torch.onnx.export(
            encoder,
            args,
            str(path),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "embedding": {0: "batch"}},
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: inputs[n].numpy() for n in names})[0]
    one = session.run(None, {n: inputs[n][:1].numpy() for n in names})[0]  # the batch axis is really dynamic
    if one.shape[0] != 1 or not np.allclose(one[0], got[0], atol=1e-4):
        raise ExportError(f"{modality}: the ONNX graph fixed its batch size while tracing (a len() of a tensor?)")
    cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    if float(cos.min()) < 0.9999:
        raise ExportError(f"{modality}: onnxruntime's embeddings differ from torch's (min cosine {cos.min():.6f})")
    return {"path": str(path), "min_cosine": float(cos.min()), "rows": int(len(cos))}


def export_hf(model, out: str | Path) -> dict[str, str]:
    """Every Hugging Face tower (``options.hf_model``) with its tokenizer or processor, by
    ``save_pretrained`` into ``out/<modality>/``; align's head after it goes to ``head.safetensors``
    there (features -> the shared space: ``F.normalize(features @ weight.T)`` for a linear head)."""
    from safetensors.torch import save_file

    out = Path(out)
    written = {}
    for mod, adapter in model.adapters.items():
        tower = getattr(adapter, "tower", None)
        if not hasattr(tower, "save_pretrained"):
            continue
        folder = out / mod
        tower.save_pretrained(folder, safe_serialization=True)
        for attr in ("tokenizer", "processor", "feature_extractor"):
            part = getattr(adapter, attr, None)
            if hasattr(part, "save_pretrained"):
                part.save_pretrained(folder)
        head = {k: v.detach().contiguous().cpu() for k, v in model.heads[mod].state_dict().items()}
        if head:
            save_file(head, str(folder / "head.safetensors"))
        written[mod] = str(folder)
    if not written:
        names = {m: type(getattr(a, "tower", a)).__name__ for m, a in model.adapters.items()}
        raise ExportError(f"no tower is a Hugging Face model (save_pretrained): {names}")
    return written


def export_align(ckpt: Path, out: str | Path) -> Path:
    """The checkpoint's files (verified) and a model card, as a folder ``align.load_model`` loads."""
    from align.model.checkpoint import read_manifest, verify_files

    names = sorted(((read_manifest(ckpt) or {}).get("files") or {}))
    verify_files(ckpt, names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in [*names, "manifest.json"]:
        shutil.copy2(ckpt / name, out / name)
    (out / "README.md").write_text(model_card(ckpt))
    return out


def model_card(ckpt: Path) -> str:
    """A README for an exported model: what it is, the data it was trained on, its config, and the
    eval reports its run wrote (``<run>/eval/*.json``), each metric as the report has it."""
    import yaml

    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    model = cfg.get("model", {})
    lines = [
        f"# align model: {', '.join(model.get('modalities', {}))} in one {model.get('embed_dim')}-dim space",
        "",
        f"Exported from `{ckpt}` (loss `{model.get('loss', 'clip')}`). Load it with `align.load_model(FOLDER)`.",
        "",
        "## Training data",
        "",
        "```yaml",
        yaml.safe_dump({"data": cfg.get("data")}, sort_keys=False).strip(),
        "```",
        "",
        "## Evaluation",
        "",
    ]
    reports = sorted((ckpt.parent.parent / "eval").glob("*.json")) if (ckpt.parent.parent / "eval").is_dir() else []
    for report in reports:
        try:
            metrics = json.loads(report.read_text()).get("metrics", {})
        except (OSError, ValueError):
            continue
        shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
        lines += [f"### {report.stem}", "", *(f"- {k}: {v:.4f}" for k, v in sorted(shown.items())), ""]
    if not reports:
        lines += ["No eval reports were found beside the checkpoint (run `align eval ...`).", ""]
    lines += ["## Config", "", "```yaml", (ckpt / "config.yaml").read_text().strip(), "```", ""]
    return "\n".join(lines)
