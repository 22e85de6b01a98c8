"""Several training sets in one run (``data.mix``): rows with a subset of the modalities.

ImageBind-style binding needs it: FSDD has audio and text, MNIST images and text, DALES point
clouds and text; no table has them all. Each set stays its own ``PairedDataset`` (own columns,
filters, errors naming its config key); ``MixedDataset`` puts them in one index space and
``MixtureSampler`` draws from them by weight. A batch mixes rows of several sets; the collator
marks which rows have which modality (``batch["present"]``), each tower encodes only its rows,
and ``ContrastiveTask`` computes each pair's loss on the rows that have both (``align.objectives.task``).

Why a sampler of our own: ``torch.utils.data.WeightedRandomSampler`` draws from its generator's
running state, so an epoch's order depends on what ran before and a resumed run would draw other
rows; here epoch ``e``'s order is a function of (seed, e) alone, and Accelerate's
``skip_first_batches`` resumes it exactly.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from align.data.labels import class_names
from align.data.tables import PairedDataset


class MixedDataset(torch.utils.data.Dataset):
    """Global row ``g`` is row ``g - offsets[d]`` of part ``d``; items carry ``part`` and their
    modalities only. Labels are namespaced per part (parts with the same class names share ids,
    so same-class rows of two sets are positives for label-based losses; others never collide)."""

    def __init__(self, parts: list[PairedDataset]) -> None:
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(int)
        self.label_offsets: list[int] = []
        spaces: dict[Any, int] = {}
        next_id = 0
        for d, part in enumerate(parts):
            if part.label_column is None:
                self.label_offsets.append(0)
                continue
            names = class_names(part.table, part.label_column)
            key = tuple(names) if names is not None else ("part", d)
            if key not in spaces:
                spaces[key] = next_id
                next_id += len(names) if names is not None else int(max(part.table[part.label_column])) + 1
            self.label_offsets.append(spaces[key])

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, g: int) -> tuple[int, int]:
        """Global row -> (part, row in that part)."""
        d = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return d, g - int(self.offsets[d])

    def __getitem__(self, g: int) -> dict[str, Any]:
        d, row = self.locate(int(g))
        item = self.parts[d][row]
        item["index"] = int(g)
        item["part"] = d
        if "label" in item:
            item["label"] += self.label_offsets[d]
        return item


class MixtureSampler(torch.utils.data.Sampler[int]):
    """An epoch of ``sum(sizes)`` draws: each draw picks part ``d`` with probability
    ``weights[d] / sum(weights)``, then the next row of part ``d``'s own shuffled order (all its
    rows once before any twice). Seeded by (seed, epoch) only: order does not depend on history."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int = 0) -> None:
        self.sizes = [int(s) for s in sizes]
        w = np.asarray(weights, dtype=float)
        self.probs = w / w.sum()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        picks = rng.choice(len(self.sizes), size=len(self), p=self.probs)
        out = np.empty(len(self), dtype=np.int64)
        for d, size in enumerate(self.sizes):
            where = np.nonzero(picks == d)[0]
            cycles = -(-len(where) // size) if len(where) else 0
            order = np.concatenate([rng.permutation(size) for _ in range(cycles)]) if cycles else np.empty(0, int)
            out[where] = order[: len(where)] + self.offsets[d]
        return iter(out.tolist())


def mixture_columns(cfg, tables: dict[str, Any]) -> tuple[dict[str, str], "_ModalityValues"]:
    """(columns, table) for ``fit_adapters`` over every training set: modality m's values are those of
    every set that has m, concatenated (a vocabulary or normalisation fitted on all of them)."""
    sources = {
        m: [(tables[k], spec.columns[m]) for k, spec, _ in cfg.data.train_parts() if m in spec.columns]
        for m in cfg.data.train_modalities()
    }
    return {m: m for m in sources}, _ModalityValues(sources)


class _ModalityValues:
    """Column lookup by modality, read only when asked (fit_adapters reads only what adapters fit)."""

    def __init__(self, sources: dict[str, list[tuple[Any, str]]]) -> None:
        self.sources = sources

    def __getitem__(self, mod: str) -> list[Any]:
        return [v for table, col in self.sources[mod] for v in table[col]]


def rows_with(present: dict[str, torch.Tensor], modalities: tuple[str, ...]) -> torch.Tensor:
    """Mask of a batch's rows that have every one of ``modalities`` (a modality the batch's loader
    does not feed at all, e.g. one a validation set lacks, is on no row)."""
    none = torch.zeros_like(next(iter(present.values())))
    return torch.stack([present.get(m, none) for m in modalities]).all(dim=0)


def select_rows(
    embeddings: torch.Tensor | None, present: torch.Tensor | None, keep: torch.Tensor, dim: int, like: torch.Tensor
) -> torch.Tensor:
    """The embeddings of the ``keep`` rows, from a modality's compact embeddings (one per row where
    ``present``); when this process has none of them, an empty [0, dim] slice of ``like`` (another
    modality's embeddings): it is part of the autograd graph, so the gather's backward, a
    collective, runs on this process as on those that have rows."""
    if embeddings is None:
        return like[:0, :dim]
    position = torch.cumsum(present.long(), dim=0) - 1
    return embeddings[position[keep]]
