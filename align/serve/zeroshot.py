"""Zero-shot class embeddings for ``Searcher.classify``, built by the eval code and cached.

The classifier is ``align.eval.zeroshot.build_classifier`` (the CLIP_benchmark prompt-ensemble
protocol ``align eval zeroshot`` uses), so a served prediction is the evaluated one. Building it
encodes classes x templates prompts, far more work than classifying one item, and a service sees
the same class list again and again: the last ``size`` classifiers are kept, keyed by the prompt
modality, the class names and the templates (least recently used dropped first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from align.serve.errors import SearchError

MAX_CLASSES = 1000


def _templates_key(templates: Any) -> tuple[Any, Any]:
    """(templates as ``build_classifier`` takes them, a hashable key for them)."""
    if isinstance(templates, str):
        from align.eval.zeroshot_metrics import load_templates, shipped_templates

        shipped = shipped_templates()
        if templates not in shipped:
            raise SearchError(
                f"templates {templates!r} is no shipped template set ({sorted(shipped)}); pass a list of "
                "templates with '{}' for the class name, or a dict class -> prompts"
            )
        templates = load_templates(shipped[templates])
    if isinstance(templates, Mapping):
        prompts = {str(c): [str(p) for p in v] for c, v in templates.items()}
        return prompts, ("per-class", tuple(sorted((c, tuple(v)) for c, v in prompts.items())))
    if isinstance(templates, Sequence) and all(isinstance(t, str) for t in templates):
        blind = [t for t in templates if "{" not in t]  # the same prompt for every class: no classifier
        if blind:
            raise SearchError(f"template {blind[0]!r} has no '{{}}' (or '{{c}}') where the class name goes")
        return list(templates), ("shared", tuple(templates))
    raise SearchError(
        f"templates must be a list of strings with '{{}}' for the class name, a dict class -> prompts, or a "
        f"shipped template set's name; got {type(templates).__name__}"
    )


def check_class_names(class_names: Any, max_chars: int) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise SearchError(f"class_names must be a list of strings, got {type(class_names).__name__}")
    names = list(class_names)
    if len(names) < 2:
        raise SearchError(f"zero-shot classification needs at least 2 class names, got {names}")
    if len(names) > MAX_CLASSES:
        raise SearchError(f"{len(names)} class names; at most {MAX_CLASSES}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > max_chars:
            raise SearchError(f"class name {i} must be a non-empty string of at most {max_chars} characters: {name!r}")
    return names


class ClassifierCache:
    """(prompt modality, class names, templates) -> [C, D] class embeddings, the last ``size`` kept."""

    def __init__(self, model: Any, size: int = 32) -> None:
        self.model, self.size = model, max(1, int(size))
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self.builds = 0  # how many classifiers were built (the rest came from the cache)

    def get(self, class_names: Any, templates: Any, prompt_modality: str, max_chars: int) -> tuple[list[str], Any]:
        """(class names, their class embeddings) for these prompts, built once."""
        import torch

        from align.eval.zeroshot import build_classifier

        names = check_class_names(class_names, max_chars)
        prompts, key = _templates_key(templates)
        key = (prompt_modality, tuple(names), key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return names, self._cache[key]
        try:
            with torch.inference_mode():
                classifier = build_classifier(self.model, names, prompts, prompt_modality).float().cpu()
        except (ValueError, TypeError) as err:  # duplicated classes, a template without {}, ...
            raise SearchError(f"zero-shot prompts: {err}") from err
        self.builds += 1
        self._cache[key] = classifier
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return names, classifier
