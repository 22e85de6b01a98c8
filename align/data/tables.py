"""Datasets: a config's ``DatasetSpec`` -> HF ``datasets`` table -> paired, preprocessed batches.

Sources are ``datasets.load_dataset`` builders on local files (imagefolder, audiofolder, csv,
json, parquet, arrow), hub dataset ids, or a builtin (``sklearn-digits``, which ships inside
scikit-learn so the demo needs no download). Media columns are read undecoded and decoded by the
modality's preprocessor, so a corrupt file fails with its path, row and column in the message.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Iterator

import numpy as np
import torch

from align.config.dataset import DatasetSpec
from align.data.builders import check_source, generation_error
from align.data.labels import class_names, encode_labels
from align.data.sources import SOURCES
from align.data.sources.common import rotated_captions
from align.data.splits import SplitError, split_rows
from align.errors import DataError, SampleError

log = logging.getLogger("align.data.tables")


def load_table(spec: DatasetSpec, key: str = "data.train"):
    """Load the table a spec names and check its columns; errors name the config key."""
    import datasets

    builtin = spec.source in SOURCES or spec.source in SOURCES.names()  # registered, else declared
    if not builtin:
        check_source(spec, key)  # a typo fails here, not after a Hub lookup; a binary "csv" is named
    try:
        if builtin:
            ds = SOURCES.get(spec.source)(spec)
        else:
            ds = datasets.load_dataset(
                spec.source, data_files=spec.data_files, data_dir=spec.data_dir, split=spec.split, **spec.load_kwargs
            )
    except DataError as err:  # a builtin's own check: its message says which option or file
        raise DataError(f"config key '{key}' (source '{spec.source}'): {err}") from None
    except TypeError as err:  # a builder that does not take one of load_kwargs
        raise DataError(
            f"config key '{key}.load_kwargs': source '{spec.source}' does not take "
            f"{sorted(spec.load_kwargs)}: {err} (to split any source use '{key}.holdout')"
        ) from None
    except datasets.exceptions.DatasetGenerationError as err:  # the builder failed on a file
        raise generation_error(spec, key, err) from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataError(
            f"config key '{key}.source': cannot load '{spec.source}' "
            f"(data_files={spec.data_files}, data_dir={spec.data_dir}): {err} (sources: a "
            f"datasets builder such as csv, json, parquet, imagefolder, audiofolder; a hub id; "
            f"or one of {SOURCES.names()})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"config key '{key}.split': source gave several splits {list(ds)}; name one")
    if spec.holdout is not None:
        ds = holdout_rows(ds, spec, key)
    if spec.where:
        ds = filter_rows(ds, spec.where, key)
    if spec.label_column and spec.label_column not in ds.column_names:
        raise DataError(
            f"config key '{key}.label_column': column '{spec.label_column}' is not in the "
            f"dataset (columns: {ds.column_names})"
        )
    if spec.label_column:  # before the join: it pairs by the class ids the joined table has too
        ds = encode_labels(ds, spec.label_column, spec.label_names, key)
    if spec.join is not None:
        ds = join_by_label(ds, spec.join, f"{key}.join")
    if spec.caption_templates:
        ds = add_label_captions(ds, spec.label_column, spec.caption_templates, key)
    if spec.pack_columns:
        ds = pack_columns(ds, spec.pack_columns, key)
    wanted = {f"{key}.columns.{m}": c for m, c in spec.columns.items()}
    for k, col in wanted.items():
        if col not in ds.column_names:
            raise DataError(f"config key '{k}': column '{col}' is not in the dataset (columns: {ds.column_names})")
    if len(ds) == 0:
        raise DataError(f"config key '{key}': dataset '{spec.source}' split '{spec.split}' is empty")
    if spec.max_samples is not None and spec.max_samples < len(ds):
        ds = ds.select(range(spec.max_samples))
    for col in spec.columns.values():  # decode media ourselves, so errors can name the file
        feat = ds.features[col]
        media = tuple(getattr(datasets, n) for n in ("Image", "Audio", "Video") if hasattr(datasets, n))
        if isinstance(feat, media) and getattr(feat, "decode", False):
            ds = ds.cast_column(col, type(feat)(decode=False))
    return ds


def filter_rows(table, where: dict, key: str):
    """Keep the rows whose columns pass every ``Condition`` (vectorised over whole columns)."""
    keep = np.ones(len(table), dtype=bool)
    for col, cond in where.items():
        if col not in table.column_names:
            raise DataError(
                f"config key '{key}.where.{col}': column '{col}' is not in the dataset (columns: {table.column_names})"
            )
        values = np.asarray(table[col], dtype=object)
        tests = {
            "eq": lambda v, x: v == x,
            "ne": lambda v, x: v != x,
            "in_": lambda v, x: np.isin(v, np.asarray(x, dtype=object)),
            "not_in": lambda v, x: ~np.isin(v, np.asarray(x, dtype=object)),
            "lt": lambda v, x: v < x,
            "le": lambda v, x: v <= x,
            "gt": lambda v, x: v > x,
            "ge": lambda v, x: v >= x,
        }
        for name, arg in cond.tests().items():
            try:
                keep &= np.asarray(tests[name](values, arg), dtype=bool)
            except TypeError as err:
                raise DataError(
                    f"config key '{key}.where.{col}': cannot compare column '{col}' ({name}): {err}"
                ) from None
    if not keep.any():
        raise DataError(f"config key '{key}.where': no rows pass the filter")
    return table.select(np.nonzero(keep)[0])


def holdout_rows(table, spec: DatasetSpec, key: str):
    """Keep ``spec.holdout.take``'s side of a seeded split of the loaded rows (see ``align.data.splits``)."""
    h = spec.holdout
    for name, col in (("label_column", spec.label_column if h.stratify else None), ("holdout.group", h.group)):
        if col is not None and col not in table.column_names:
            raise DataError(
                f"config key '{key}.{name}': column '{col}' is not in the dataset (columns: {table.column_names})"
            )
    labels = table[spec.label_column] if h.stratify and spec.label_column else None
    groups = table[h.group] if h.group else None
    try:
        rows = split_rows(
            len(table),
            h.take,
            labels=labels,
            groups=groups,
            test_fraction=h.test_fraction,
            folds=h.folds,
            fold=h.fold,
            seed=h.seed,
        )
    except SplitError as err:
        raise DataError(f"config key '{key}.holdout': cannot split {len(table)} rows: {err}") from None
    return table.select(rows)


def join_by_label(table, join, key: str):
    """Attach ``join.data.columns`` of another table, pairing each row with a row of the same label:
    the k-th row of class c takes the (k mod n_c)-th of class c's other rows in a seeded shuffle."""
    import datasets

    other = load_table(join.data, f"{key}.data")
    for name, t in ((key.rsplit(".", 1)[0], table), (f"{key}.data", other)):
        if join.by not in t.column_names:
            raise DataError(f"config key '{key}.by': column '{join.by}' is not in {name} (columns: {t.column_names})")
    clash = sorted(set(join.data.columns) & set(table.column_names))
    if clash:
        raise DataError(f"config key '{key}.data.columns': {clash} already exist in the table")
    rng = np.random.default_rng(join.seed)
    other_labels = np.asarray(other[join.by])
    pools = {lab: rng.permutation(np.nonzero(other_labels == lab)[0]) for lab in np.unique(other_labels)}
    picks, seen = [], {}
    for i, lab in enumerate(table[join.by]):
        if lab not in pools:
            raise DataError(f"config key '{key}': row {i} has {join.by}={lab!r}, which the joined table lacks")
        k = seen.get(lab, 0)
        seen[lab] = k + 1
        picks.append(int(pools[lab][k % len(pools[lab])]))
    attached = other.select(picks).select_columns(list(join.data.columns.values()))
    attached = attached.rename_columns({v: k for k, v in join.data.columns.items() if k != v})
    return datasets.concatenate_datasets([table, attached], axis=1)


def pack_columns(table, packs: dict[str, list[str]], key: str):
    """Add each new column as a dict of existing columns per row (a graph's edge list + features,
    a cloud's points + colours), so one modality sample can come from several columns."""
    for new, cols in packs.items():
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise DataError(
                f"config key '{key}.pack_columns.{new}': columns {missing} are not in the "
                f"dataset (columns: {table.column_names})"
            )
        if new in table.column_names:
            raise DataError(f"config key '{key}.pack_columns.{new}': column '{new}' already exists")
        table = table.map(
            lambda b, cols=cols: {new: [dict(zip(cols, v)) for v in zip(*(b[c] for c in cols))]},
            batched=True,
            desc=f"packing {new}",
        )
    return table


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's and Python's global RNGs inside the block, restoring
    them after (cheaper than ``torch.random.fork_rng``, which this runs once per sample)."""
    gen = torch.random.default_generator
    torch_state, py_state, np_state = gen.get_state(), random.getstate(), np.random.get_state()
    gen.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def add_label_captions(table, label_column: str, templates: list[str], key: str = "data"):
    """Add ``label_captions``: every template filled with the row's class name, rotated per row
    (training draws one per visit; evaluation uses the first)."""
    names = class_names(table, label_column)
    labels = list(table[label_column])
    unlabelled = next((i for i, label in enumerate(labels) if label < 0), None)
    if unlabelled is not None:  # HF's -1 = "no label": names[-1] would caption it as the last class
        raise DataError(
            f"config key '{key}.caption_templates': column '{label_column}' row {unlabelled} has no "
            f"label (-1), so caption_templates "
            f"cannot name its class; drop such rows with where: {{{label_column}: {{ge: 0}}}}"
        )
    captions = [
        rotated_captions(templates, names[label] if names is not None else str(label), i)
        for i, label in enumerate(labels)
    ]
    return table.add_column("label_captions", captions)


class PairedDataset(torch.utils.data.Dataset):
    """Row i -> {modality: preprocessed sample, "label": int?, "index": i}.

    In training, each sample's random augmentation (crops, which caption) is drawn from RNGs seeded
    by (seed, epoch, row), so it does not depend on worker count, prefetching or resumption.
    """

    def __init__(
        self,
        table,
        columns: dict[str, str],
        preprocessors: dict[str, Any],
        train: bool,
        label_column: str | None = None,
        name: str = "dataset",
        seed: int = 0,
        on_error: str = "raise",
        refill: bool | None = None,
        cache_samples: bool = False,
    ) -> None:
        self.on_error = on_error
        # row -> {modality: preprocessed sample} for deterministic preprocessing (data.cache_samples)
        self.memo: dict[int, dict[str, Any]] | None = {} if cache_samples else None
        self.refill = train if refill is None else refill
        self.table = table
        self.columns = columns
        self.preprocessors = preprocessors
        self.train = train
        self.label_column = label_column
        self.name = name
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if self.on_error == "raise":
            return self.load(i)
        skipped: list[int] = []
        row = i
        for attempt in range(len(self)):
            try:
                item = self.load(row)
                break
            except SampleError as err:
                log.warning("skipped: %s", err)
                skipped.append(row)
                if not self.refill:  # evaluation leaves the row out
                    return {"index": i, "skipped": skipped}
                # training keeps batches full: draw another row (seeded, so resumption agrees)
                row = int(np.random.default_rng((self.seed, self.epoch, i, attempt)).integers(len(self)))
        else:
            raise SampleError(f"{self.name}: every row failed to load")
        if skipped:
            item["skipped"] = skipped
        return item

    def load(self, i: int) -> dict[str, Any]:
        """Preprocess row i; a failure raises ``SampleError`` naming the row, column and file."""
        row = self.table[i]
        item: dict[str, Any] = {"index": i}
        rng = (
            seeded_rngs(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**63)
            if self.train
            else contextlib.nullcontext()
        )
        with rng:
            for mod, col in self.columns.items():
                memo = self.memo.get(i, {}) if self.memo is not None else {}
                if mod in memo:
                    item[mod] = memo[mod]
                    continue
                try:
                    item[mod] = self.preprocessors[mod](row[col], train=self.train)
                    if self.memo is not None and self.preprocessors[mod].deterministic_for(row[col]):
                        self.memo.setdefault(i, {})[mod] = item[mod]
                except (SampleError, OSError, ValueError, TypeError, RuntimeError) as err:
                    raise SampleError(f"{self.name} row {i}, column '{col}' ({mod}): {err}") from err
        if self.label_column is not None:
            label = row[self.label_column]
            if not isinstance(label, (int, np.integer)):
                raise SampleError(
                    f"{self.name} row {i}, column '{self.label_column}': label {label!r} is "
                    "not a class id (tables from align.data.tables.load_table map names to ids)"
                )
            item["label"] = int(label)
        return item


class Collator:
    """Batches a list of items with each modality's own collate (picklable for workers).

    ``masks`` (``data.mix``): rows may lack modalities; each modality's collate gets only the rows
    that have it, ``batch["present"][m]`` marks them, a missing label is -1 and ``batch["part"]``
    says which training set each row came from."""

    def __init__(self, preprocessors: dict[str, Any], masks: bool = False) -> None:
        self.preprocessors = preprocessors
        self.masks = masks

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``skipped`` counts rows that failed to load (``on_error: skip``); items that carry no
        sample (left-out evaluation rows) are dropped from the batch."""
        skipped = sum(len(it.get("skipped", ())) for it in items)
        items = [it for it in items if any(m in it for m in self.preprocessors)]
        batch: dict[str, Any] = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "skipped": torch.tensor(skipped),
        }
        if self.masks:
            batch["present"] = {
                m: torch.tensor([m in it for it in items], dtype=torch.bool) for m in self.preprocessors
            }
            batch["part"] = torch.tensor([it.get("part", 0) for it in items], dtype=torch.long)
        if not items:
            return batch
        for mod, pre in self.preprocessors.items():
            rows = [it[mod] for it in items if mod in it]
            if rows and (self.masks or mod in items[0]):
                batch[mod] = pre.collate(rows)
        if any("label" in it for it in items):
            batch["label"] = torch.tensor([it.get("label", -1) for it in items])
        return batch


def describe_spec(spec: DatasetSpec, table=None) -> dict[str, Any]:
    """What a table is, for reports: the source, split, filters and fold, not just a split name
    (rows chosen by ``where`` from a 'train' split must not read as a train-set evaluation)."""
    d: dict[str, Any] = {"source": spec.source, "split": spec.split}
    for name in ("data_files", "data_dir", "max_samples"):
        if getattr(spec, name) is not None:
            d[name] = getattr(spec, name)
    if spec.where:
        d["where"] = {col: cond.tests() for col, cond in spec.where.items()}
    if spec.holdout is not None:
        d["holdout"] = spec.holdout.model_dump()
        if spec.holdout.folds is not None:
            d["fold"] = spec.holdout.fold
    elif "fold" in spec.load_kwargs or "folds" in spec.load_kwargs:
        d["fold"] = spec.load_kwargs.get("fold", 0)
    if spec.load_kwargs:
        d["load_kwargs"] = dict(spec.load_kwargs)
    if table is not None:
        d["rows"] = len(table)
        if spec.label_column:
            names = class_names(table, spec.label_column)
            if names is not None:
                d["classes"] = names  # class id i is classes[i]
    return d


@contextlib.contextmanager
def hf_progress(enabled: bool) -> Iterator[None]:
    """HF datasets' progress bars ("Generating train split", "Map") on or off inside the block."""
    from datasets.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
