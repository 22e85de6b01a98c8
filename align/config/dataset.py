"""The dataset part of a run's config: which table (or stream) to read and how its rows pair up.

``DatasetSpec`` and the classes it holds (row filters, joins, holdout splits) live here so that
``align/config/schema.py`` stays one screen of run-level sections; ``align.config.schema`` imports them from here
``Strict`` is the base of every config
section: unknown keys fail with their dotted path instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Condition(Strict):
    """A row filter on one column (all given tests must hold)."""

    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    lt: int | float | None = None
    le: int | float | None = None
    gt: int | float | None = None
    ge: int | float | None = None

    @model_validator(mode="after")
    def _some_test(self) -> "Condition":
        if not self.tests():
            raise ValueError("give at least one of eq, ne, in, not_in, lt, le, gt, ge")
        return self

    def tests(self) -> dict[str, Any]:
        """The given tests (None = not given, so a dumped config reloads the same)."""
        return {k: v for k, v in self if v is not None}


class JoinSpec(Strict):
    """Attach columns of another table by a shared label: each row gets a row of the other table
    with the same label (a fixed, seeded pairing: rows of a class take that class's other rows in a
    shuffled order, cycling when there are fewer), e.g. spoken digits paired with MNIST images."""

    data: "DatasetSpec" = Field(
        description="the other table; its 'columns' name the columns to attach (column name here -> column there)"
    )
    by: str = Field(description="label column present in both tables (not `on`: YAML reads that as true)")
    seed: int = 0


class HoldoutSpec(Strict):
    """A seeded train/test split (or one fold of a k-fold split) of any source's rows, made right
    after loading, before ``where`` filters, so specs with different filters never share rows
    across the split. Stratified by ``label_column`` when the spec has one; with ``group`` no value
    of that column (a speaker, a patient, a molecule scaffold) lands on both sides."""

    take: Literal["train", "test"] = Field(description="which side of the split this spec keeps")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of rows (of groups, with group) held out; ignored with folds"
    )
    folds: int | None = Field(None, ge=2, description="k-fold: test is fold `fold` of k, train the rest")
    fold: int = Field(0, ge=0)
    seed: int = 0
    stratify: bool = Field(True, description="keep class proportions of label_column (when the spec has one)")
    group: str | None = Field(None, description="column whose values never straddle the split")

    @model_validator(mode="after")
    def _fold_in_range(self) -> "HoldoutSpec":
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is outside 0..{self.folds - 1}")
        return self


class DatasetSpec(Strict):
    """Which `datasets` source to load and which column feeds which modality."""

    source: str = Field(
        description="imagefolder|audiofolder|csv|json|parquet|arrow, a builtin (sklearn-digits) or a hub dataset id"
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    data_dir: str | None = None
    split: str = "train"
    columns: dict[str, str] = Field(min_length=1, description="modality -> column name")
    label_column: str | None = None
    caption_templates: list[str] | None = Field(
        None,
        description="fill these '{}' templates with each "
        "row's class name (from label_column) into a column "
        "'label_captions', e.g. to train an imagefolder",
    )
    max_samples: int | None = Field(None, gt=0)
    holdout: HoldoutSpec | None = Field(
        None,
        description="seeded (stratified, group-aware) train/test or k-fold split of the loaded rows, for any source",
    )
    load_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra load_dataset arguments, or a builtin source's options"
    )
    where: dict[str, Condition] | None = Field(
        None, description="keep rows whose columns pass these tests, e.g. {take: {lt: 5}, speaker: {ne: theo}}"
    )
    label_names: list[str] | dict[str, str] | None = Field(
        None,
        description="class names for label_column, in class id order: an integer label i is "
        "label_names[i]; a string label or a ClassLabel's name (imagefolder / audiofolder folders) is "
        "matched by name, ignoring case, '_', '-' and spaces, never by position (default: the "
        "ClassLabel's names, else the sorted distinct strings). A mapping {name in the data: name "
        "shown} names every class and shows it renamed, in the mapping's order",
    )
    join: JoinSpec | None = None
    pack_columns: dict[str, list[str]] | None = Field(
        None,
        description="new column -> the columns it packs: each row gets a dict {column: value}, "
        "e.g. {graph: [edge_index, node_feat, edge_attr, num_nodes]} for a graph "
        "stored as edge list + feature columns, or {cloud: [points, colors]}",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="a sample that cannot be decoded: raise (naming file and row) or skip and "
        "count it (training draws another row; evaluation leaves the row out)",
    )
    streaming: bool = Field(
        False,
        description="read the source as a stream (datasets' streaming, e.g. "
        "webdataset tar shards) instead of loading the whole table: sharded over "
        "processes and workers, shuffled through a buffer, resumed exactly "
        "(align/data/streaming.py); only data.train can stream",
    )
    shuffle_buffer: int = Field(
        1000,
        gt=0,
        description="streaming: samples held in the shuffle buffer "
        "(bigger mixes shards better and holds more in memory)",
    )

    @model_validator(mode="after")
    def _templates_need_labels(self) -> "DatasetSpec":
        if self.caption_templates is not None:
            if not self.label_column:
                raise ValueError("caption_templates needs label_column (the class of each row)")
            bad = [t for t in self.caption_templates if "{}" not in t]
            if bad:
                raise ValueError(f"caption_templates must each contain '{{}}' for the class name: {bad}")
        if self.label_names is not None and not self.label_column:
            raise ValueError("label_names needs label_column")
        shown = list(self.label_names.values()) if isinstance(self.label_names, dict) else self.label_names
        if shown is not None and len(set(shown)) != len(shown):
            raise ValueError(f"label_names must be unique: {self.label_names}")
        return self

    @field_validator("streaming")
    @classmethod
    def _can_stream(cls, streaming: bool, info: ValidationInfo) -> bool:
        """A stream is read once, shard by shard, and never held whole: refuse what needs the whole
        table, naming the option and what to do instead (``streaming`` is declared last, so every
        other field is in ``info.data``)."""
        if not streaming:
            return streaming
        data = info.data
        if data.get("source") in _builtin_sources():
            raise ValueError(
                f"source '{data['source']}' is a builtin that builds its whole table in memory and "
                "cannot stream; stream a datasets builder instead (webdataset tar shards, parquet, "
                "csv, json), e.g. shards written by `align shards CONFIG OUT_DIR`"
            )
        whole_table = {
            "holdout": "a seeded, stratified split needs every row's label and group; split the shards instead "
            "(the train and test shards as different data_files)",
            "join": "pairing rows by label needs both whole tables; pair the rows when writing the shards",
            "where": "row filters are not applied to streams; filter when writing the shards",
            "max_samples": "a stream has no first-N rows to keep across processes; bound the run with "
            "train.steps or write fewer shards",
        }
        for name, why in whole_table.items():
            if data.get(name) is not None:
                raise ValueError(f"cannot be combined with '{name}': {why}")
        if isinstance(data.get("label_names"), dict):
            raise ValueError(
                "label_names as a mapping renames the data's class names, which a stream does not "
                "have before training (its labels are ids or strings); give a list, in class id order"
            )
        if data.get("caption_templates") and data.get("label_names") is None:
            raise ValueError(
                "caption_templates on a stream need label_names: class names cannot be collected "
                "from a stream before training"
            )
        return streaming


JoinSpec.model_rebuild()


class MixPart(Strict):
    """One training set of several (``data.mix``): its rows feed only the modalities it has columns
    for, and it is drawn with probability ``weight / sum(weights)`` per sample."""

    data: DatasetSpec
    weight: float = Field(
        1.0,
        gt=0,
        description="sampling weight (relative): the share of samples drawn "
        "from this set; an 'epoch' is as many draws as all sets have rows",
    )


def _builtin_sources() -> set[str]:
    """Names of the builtin (and plugin) table sources, from their entry points: they build a
    ``datasets.Dataset`` in memory, so none can stream (read without importing ``align.data.sources``,
    which sits above this layer)."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="align.sources")}
