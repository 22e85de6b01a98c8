"""Streaming training data (``data.train.streaming: true``): the source is read through datasets'
own streaming, ``load_dataset(..., streaming=True)``, e.g. webdataset tar shards in the img2dataset
layout (``key.wav`` / ``key.png`` beside ``key.txt`` and ``key.json``), never held as a table.

Who reads what. ``split_dataset_by_node`` gives each process its shards (every world_size-th
sample when the shard count is not a multiple of the world size), and datasets gives each
DataLoader worker its share of those; ``shuffle(seed, buffer_size)`` + ``set_epoch`` reshuffle the
shard order and a sample buffer every epoch, identically on every process. So within an epoch no
sample is read twice or by two processes.

Batches. A worker decodes its samples with the modalities' preprocessors (augmentation seeded by
(seed, epoch, shard, key), so it does not depend on the worker count) and collates full batches.
A sample that fails to decode is skipped and counted in the batch's ``skipped`` (``on_error:
skip``) or raised naming its shard and key. Members the webdataset builder decodes itself
(``.json``, ``.npy``, ``.cls``) cannot be skipped: a bad one stops the stream with a ``DataError``
naming the shard; a shard cut short is refused, or read up to its cut under ``on_error: skip``, before
the stream opens (``align/data/shard_truncation.py``). The process takes its workers' batches in a
fixed order (turns go round the workers; a finished worker's turns are skipped), whatever order they
arrive in (``align/data/stream_order.py``).

Epochs. Training is by steps. When one process's stream ends, the epoch ends on every process (one
all-reduced number per step keeps them in lockstep, so all make the same number of steps), and the
next epoch reshuffles. Dropped each epoch: each worker's last partial batch, and whatever the
other processes still held when the first one ran out.

Resume. Per process the state is the epoch, each worker's count of samples read (decoded or
skipped) up to its last batch taken, and whose turn is next. A resumed worker re-reads its
deterministic stream and skips that many samples before decoding anything, so the resumed run sees
exactly the batches the uninterrupted one would. (datasets' ``IterableDataset.state_dict`` drops the
shuffle buffer on resume and needs torchdata's StatefulDataLoader for workers: not exact.) The
shard list is stored too; resuming on another one is refused.

The table-shaped parts of a run (``fit_adapters``, the look before training) see the stream's
first ``HEAD_ROWS`` samples (``head_table``). ``align.data.shards.write_shards`` writes such shards.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tarfile
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import torch

from align.config.dataset import DatasetSpec
from align.data.builders import check_source
from align.data.labels import class_id
from align.data.shard_fingerprints import changed_shard, shard_fingerprints
from align.data.shard_truncation import missed_truncations, readable_data_files, truncated_shards
from align.data.sources.common import rotated_captions
from align.data.stream_order import all_processes, gather, round_robin
from align.data.tables import Collator, seeded_rngs
from align.errors import ConfigError, DataError, SampleError

log = logging.getLogger("align.data.streaming")

HEAD_ROWS = 256  # samples at the head of the stream that fit_adapters and the look before training see


def shard_files(spec: DatasetSpec, key: str = "data.train") -> list[str] | None:
    """The files ``data_files`` names for ``spec.split``, resolved by datasets itself (what a
    checkpoint stores); None for a source without data_files (a hub id)."""
    if spec.data_files is None:
        return None
    from datasets.data_files import DataFilesDict, sanitize_patterns

    files = DataFilesDict.from_patterns(sanitize_patterns(spec.data_files), base_path=spec.data_dir or "")
    if not files.get(spec.split):
        raise DataError(
            f"config key '{key}.data_files': no shards match {spec.data_files!r} for split "
            f"'{spec.split}' (from {os.getcwd()}); write them first: align shards CONFIG OUT_DIR"
        )
    return list(files[spec.split])


def open_stream(spec: DatasetSpec, key: str = "data.train"):
    """``spec``'s source as a datasets ``IterableDataset`` with media left undecoded (the
    preprocessors decode them, so a bad file is named with its shard and key)."""
    import datasets

    check_source(spec, key)  # a typo fails here, not after a Hub lookup
    data_files = readable_data_files(spec, shard_files(spec, key), key)  # a truncated shard: refused or cut clean
    try:
        ds = datasets.load_dataset(
            spec.source,
            data_files=data_files,
            data_dir=spec.data_dir,
            split=spec.split,
            streaming=True,
            **spec.load_kwargs,
        )
    except (FileNotFoundError, ValueError, TypeError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataError(
            f"config key '{key}.source': cannot stream '{spec.source}' (data_files={spec.data_files}): {err}"
        ) from None
    return ds.decode(False)


def sample_seed(seed: int, epoch: int, shard: str, key: str) -> int:
    """A sample's RNG seed from (seed, epoch, shard name, sample key): the same for any worker
    count, prefetching or resumption."""
    text = f"{seed}\0{epoch}\0{os.path.basename(shard)}\0{key}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % 2**63


def where(example: dict) -> str:
    return f"shard {os.path.basename(example.get('__url__') or '?')} key {example.get('__key__')}"


def stream_row(example: dict, spec: DatasetSpec, key: str = "data.train") -> dict[str, Any]:
    """One streamed sample as the row ``spec`` reads: a metadata dict (a ``.json`` member) also as
    ``json.label``-style columns, the label as a class id (names by ``label_names``), the
    ``label_captions`` of ``caption_templates`` and the ``pack_columns``."""
    row = dict(example)
    for col, value in example.items():
        if isinstance(value, dict) and "bytes" not in value:  # metadata, not an undecoded media file
            row.update({f"{col}.{k}": v for k, v in value.items()})
    if spec.label_column:
        label, names = row.get(spec.label_column), spec.label_names
        if isinstance(label, str) and names is not None and class_id(label, names) is not None:
            label = class_id(label, names)  # by name, as a table's strings are (align/data/labels.py)
        if (
            isinstance(label, bool)
            or not isinstance(label, (int, np.integer))
            or (names is not None and not 0 <= label < len(names))
        ):
            raise SampleError(
                f"{where(example)}: label {label!r} in column '{spec.label_column}' is not a class "
                f"id{f' or a name in {key}.label_names' if names else ' (give label_names for names)'}"
            )
        row[spec.label_column] = label = int(label)
        if spec.caption_templates:  # names are given: the spec's validation asks for them
            salt = sample_seed(0, 0, example.get("__url__") or "", str(example.get("__key__")))
            row["label_captions"] = rotated_captions(spec.caption_templates, names[label], salt)
    for new, cols in (spec.pack_columns or {}).items():
        row[new] = {c: row.get(c) for c in cols}
    return row


def head_table(spec: DatasetSpec, key: str = "data.train", rows: int = HEAD_ROWS):
    """The first ``rows`` samples of the unshuffled stream as a table (the spec's columns only):
    a stream has no whole table, so this is what ``fit_adapters`` learns from and what the look
    before training shows (its row count is the head's). Checks the columns, naming their keys."""
    import datasets

    head = []
    for example in itertools.islice(open_stream(spec, key), rows):
        try:
            head.append(stream_row(example, spec, key))
        except SampleError:
            if spec.on_error == "raise":
                raise
    if not head:
        raise DataError(f"config key '{key}': the stream of '{spec.source}' ({spec.data_files}) has no samples")
    wanted = {f"{key}.columns.{m}": c for m, c in spec.columns.items()}
    if spec.label_column:
        wanted[f"{key}.label_column"] = spec.label_column
    for k, col in wanted.items():
        if col not in head[0]:
            raise DataError(f"config key '{k}': column '{col}' is not in the stream (columns: {sorted(head[0])})")
    table = datasets.Dataset.from_list([{c: r[c] for c in dict.fromkeys(wanted.values())} for r in head])
    if spec.label_column and spec.label_names:
        table = table.cast_column(spec.label_column, datasets.ClassLabel(names=spec.label_names))
    return table


class StreamBatches(torch.utils.data.IterableDataset):
    """A process's stream as collated batches, each DataLoader worker reading its own shards. A
    batch carries ``keys`` (its samples), ``worker`` and ``position`` (how many samples that worker
    had read by then: its resume point); a worker ends with ``{"worker", "end": True}``."""

    def __init__(
        self,
        stream,
        spec: DatasetSpec,
        key: str,
        preprocessors: dict[str, Any],
        batch_size: int,
        seed: int = 0,
        table=None,
    ) -> None:
        self.stream, self.spec, self.key, self.seed = stream, spec, key, seed
        self.preprocessors, self.collate, self.batch_size = preprocessors, Collator(preprocessors), batch_size
        self.name = f"{key} ({spec.source})"
        self.table = table  # the stream's head: what the look before training shows
        self.epoch, self.positions = 0, [0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        self.stream.set_epoch(self.epoch)
        position = self.positions[worker]
        items, skipped = [], []
        for example in itertools.islice(self._read(), position, None):  # resume: skip, undecoded
            position += 1
            try:
                items.append(self.load(example, position - 1))
            except SampleError as err:
                if self.spec.on_error == "raise":
                    raise
                log.warning("skipped: %s", err)
                skipped.append(position - 1)
                continue
            if skipped:  # counted with the batch that replaced them (Collator sums these)
                items[-1]["skipped"], skipped = skipped, []
            if len(items) == self.batch_size:
                batch = self.collate(items)
                batch.update(keys=[it["key"] for it in items], worker=worker, position=position)
                yield batch
                items = []
        yield {"worker": worker, "end": True, "position": position, "dropped": len(items)}

    def _read(self) -> Iterator[dict]:
        examples, last = iter(self.stream), None
        while True:
            try:
                example = next(examples)
            except StopIteration:
                return
            except (OSError, ValueError, EOFError, tarfile.TarError) as err:  # not a sample we decode
                cut = missed_truncations(shard_files(self.spec, self.key))
                if cut:  # a cut the end check at open missed (zeros at the end): named, whatever on_error says
                    raise DataError(f"{self.name}: {cut[0].describe()}; write the shard again") from err
                near = (
                    f" (the last sample read: {where(last)}; shuffled, the bad one is up to "
                    f"{self.spec.shuffle_buffer} samples on)"
                    if last
                    else ""
                )
                raise DataError(
                    f"{self.name}: datasets' webdataset builder could not read a shard: a damaged "
                    f"tar, or a .json / .npy / .cls member it decodes itself{near}: {err}"
                ) from err
            last = example
            yield example

    def load(self, example: dict, position: int) -> dict[str, Any]:
        """Preprocess one sample; a failure raises ``SampleError`` naming shard, key and column."""
        row = stream_row(example, self.spec, self.key)
        name = where(example)
        item: dict[str, Any] = {"index": position, "key": str(example.get("__key__"))}
        with seeded_rngs(sample_seed(self.seed, self.epoch, example.get("__url__") or "", item["key"])):
            for mod, col in self.spec.columns.items():
                try:
                    item[mod] = self.preprocessors[mod](row[col], train=True)
                except (SampleError, OSError, ValueError, TypeError, RuntimeError) as err:
                    raise SampleError(f"{self.name} {name}, column '{col}' ({mod}): {err}") from err
        if self.spec.label_column:
            item["label"] = row[self.spec.label_column]
        return item


class StreamingLoader:
    """A process's batches of a streamed dataset, epoch after epoch, resumable exactly. Not a
    DataLoader, so Accelerate's ``prepare`` leaves it alone: the sharding is done here, and
    ``epoch_batches`` moves the batches to the device."""

    def __init__(
        self,
        spec: DatasetSpec,
        key: str,
        preprocessors: dict[str, Any],
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        table=None,
        worker_init_fn: Callable[[int], None] | None = None,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        self.key, self.batch_size, self.num_workers, self.worker_init_fn = key, batch_size, num_workers, worker_init_fn
        self.rank, self.world_size = rank, world_size
        self.shards = shard_files(spec, key)
        self.truncated = truncated_shards(self.shards)  # read up to their cut (on_error skip), else refused
        stream = open_stream(spec, key).shuffle(seed=seed, buffer_size=spec.shuffle_buffer)
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.dataset = StreamBatches(stream, spec, key, preprocessors, batch_size, seed, table)
        self.epoch, self.batches, self.positions, self.next_worker = 0, 0, [0] * max(num_workers, 1), 0
        self._fingerprints: dict[str, dict[str, Any]] | None = None

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """The shards' sizes and hashes, computed once per run (at its first checkpoint)."""
        if self._fingerprints is None:
            self._fingerprints = shard_fingerprints(self.shards)
        return self._fingerprints

    def epoch_batches(self, device=None) -> Iterator[dict[str, Any]]:
        """The rest of this epoch's batches, in lockstep with the other processes (the epoch ends
        on all when one runs out); then the position moves to the start of the next epoch."""
        from accelerate.utils import send_to_device

        fresh = self.batches == 0 and not any(self.positions)
        self.dataset.epoch, self.dataset.positions = self.epoch, list(self.positions)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, worker_init_fn=self.worker_init_fn
        )
        for batch in itertools.chain(round_robin(loader, len(self.positions), self.next_worker), [None]):
            if not all_processes(batch is not None, device):
                break
            worker = batch.pop("worker")
            self.positions[worker], self.next_worker = batch.pop("position"), (worker + 1) % len(self.positions)
            self.batches += 1
            yield batch if device is None else send_to_device(batch, device)
        if fresh and self.batches == 0:
            raise ConfigError(
                f"config key 'train.batch_size': no process-and-worker share of {self.key} fills "
                f"one batch of {self.batch_size} (fewer samples per share, or fewer workers)"
            )
        self.epoch, self.batches, self.positions, self.next_worker = self.epoch + 1, 0, [0] * len(self.positions), 0

    def state_dict(self) -> dict[str, Any]:
        """Every process's position in the stream, with the shard list and the layout the positions
        belong to. A collective: every process must call it."""
        mine = {
            "epoch": self.epoch,
            "batches": self.batches,
            "positions": list(self.positions),
            "next_worker": self.next_worker,
        }
        return {
            "shards": self.shards,
            "shard_contents": self.fingerprints(),
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "processes": dict(gather((self.rank, mine))),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue where ``state_dict`` was taken; refuses, naming the key, what would not see the
        same samples: another shard list, a shard rewritten since (size and content hash; checkpoints
        from before these were recorded are checked by name only), process count or worker count."""
        if state is None:
            raise ConfigError(
                f"config key '{self.key}.streaming': the checkpoint holds no stream position (its "
                "run did not stream); start a new run in another output_dir"
            )
        if state["shards"] != self.shards:
            then, now = set(state["shards"] or []), set(self.shards or [])
            change = (
                "the same shards in another order"
                if then == now
                else f"{len(then)} shards then, {len(now)} now; "
                f"new: {sorted(now - then)[:3]}, gone: {sorted(then - now)[:3]}"
            )
            raise ConfigError(
                f"config key '{self.key}.data_files': the shard list changed since the checkpoint "
                f"({change}), so the resumed run would not see the samples the interrupted one "
                "would have; point data_files at the checkpoint's shards or start a new run"
            )
        recorded = state.get("shard_contents")
        changed = changed_shard(recorded or {})
        if changed is not None:
            raise ConfigError(
                f"config key '{self.key}.data_files': {changed} since the checkpoint, so the resumed run "
                "would read another stream than the interrupted one; restore the shard or start a new run"
            )
        if state["world_size"] != self.world_size:
            raise ConfigError(
                f"config key '{self.key}.streaming': the run was checkpointed with "
                f"{state['world_size']} processes and is resumed with {self.world_size}; stream "
                "positions are per process, so launch it with as many as before"
            )
        if state["num_workers"] != self.num_workers:
            raise ConfigError(
                f"config key 'data.num_workers': the streaming run was checkpointed with "
                f"{state['num_workers']} workers per process, now {self.num_workers}; each "
                "worker reads its own shards, so resume with as many as before"
            )
        if recorded:  # just verified: the next checkpoint reuses the record instead of hashing again
            self._fingerprints = recorded
        mine = state["processes"][self.rank]
        self.epoch, self.batches, self.next_worker = mine["epoch"], mine["batches"], mine["next_worker"]
        self.positions = list(mine["positions"])


def streaming_loader(
    cfg,
    preprocessors: dict[str, Any],
    spec: DatasetSpec,
    key: str,
    table=None,
    worker_init_fn: Callable[[int], None] | None = None,
) -> StreamingLoader:
    """The training loop's loader for a streaming spec: this process's rank and the world size
    from Accelerate's state (``build_accelerator`` made it), the table being the stream's head."""
    from accelerate import PartialState

    insists = [m for m in spec.columns if getattr(cfg.model.modalities[m], "cache", "off") in ("memory", "disk")]
    if insists:  # align/training/feature_cache.py keys a frozen tower's features by table row
        raise ConfigError(
            f"config key 'model.modalities.{insists[0]}.cache': a streamed {key} has no fixed rows "
            "to cache a frozen tower's features by; use cache: auto (off for streams) or off"
        )
    state = PartialState()
    pre = {m: p for m, p in preprocessors.items() if m in spec.columns}
    return StreamingLoader(
        spec,
        key,
        pre,
        cfg.train.batch_size,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        rank=state.process_index,
        world_size=state.num_processes,
        table=head_table(spec, key) if table is None else table,
        worker_init_fn=worker_init_fn,
    )
