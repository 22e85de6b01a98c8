"""align: train encoders for many modalities into one shared embedding space.

The public Python API is this curated façade; each name is a pointer to its one home, imported on
first use (module ``__getattr__``), so ``import align`` and ``align --help`` load no torch::

    import align

    cfg = align.load_config("configs/demo-digits.yaml", ["train.steps=200", "output_dir=runs/api"])
    result = align.train(cfg)                              # align.app.trainer.train
    model, cfg = align.load_model("runs/api")              # align.model.checkpoint.load_model
    emb = align.encode(model, "text", ["a handwritten seven."])
    report = align.evaluate("zeroshot", "runs/api")        # align.eval.commands.run_eval
    fewshot = align.few_shot("runs/api", shots=[1, 4])     # align.adapt.run.run_adapt
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute", its one home. Strings, not imports (not even under
# TYPE_CHECKING): the package root imports no layer, so the layer contract sees no upward edge.
_API: dict[str, str] = {
    "load_config": "align.config.schema:load_config",
    "Config": "align.config.schema:Config",
    "DatasetSpec": "align.config.dataset:DatasetSpec",
    "train": "align.app.trainer:train",
    "crossval": "align.app.crossval:run_crossval",
    "load_model": "align.model.checkpoint:load_model",
    "AlignModel": "align.model.align_model:AlignModel",
    "encode": "align.model.encode:encode",
    "evaluate": "align.eval.commands:run_eval",
    "evaluate_pairs": "align.eval.pairs:run_pairs",
    "few_shot": "align.adapt.run:run_adapt",  # not "adapt": the subpackage align.adapt owns that attribute
    "load_adapted": "align.model.adapted:load_adapted",
    "build_index": "align.index.build:build_index",
    "query_index": "align.index.build:query_index",
    "EmbeddingIndex": "align.index.embedding_index:EmbeddingIndex",
    "AlignError": "align.errors:AlignError",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    home = _API.get(name)
    if home is None:
        raise AttributeError(f"module 'align' has no attribute {name!r}")
    module, attr = home.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
