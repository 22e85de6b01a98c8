"""Run configuration: plain data (YAML) validated by pydantic before anything heavy starts.

Every section forbids unknown keys, so a misspelled key fails with its dotted path instead of
being silently ignored. Adapter options are validated against the adapter's own schema.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator


from align.errors import ConfigError  # noqa: E402  (re-exported: the config layer's error)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModalitySpec(Strict):
    adapter: str | None = Field(None, description="registered adapter name; defaults to the modality name")
    options: dict[str, Any] = Field(default_factory=dict, description="adapter options (the adapter's schema)")
    head: Literal["linear", "mlp", "identity"] = "linear"

    def adapter_name(self, modality: str) -> str:
        return self.adapter or modality


class ModelConfig(Strict):
    embed_dim: int = Field(512, gt=0)
    modalities: dict[str, ModalitySpec] = Field(min_length=1)
    loss: Literal["clip", "siglip"] = "clip"
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None
    learn_logit_scale: bool = True


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

    data: "DatasetSpec" = Field(description="the other table; its 'columns' name the columns to attach "
                                "(column name here -> column there)")
    by: str = Field(description="label column present in both tables (not `on`: YAML reads that as true)")
    seed: int = 0


class HoldoutSpec(Strict):
    """A seeded train/test split (or one fold of a k-fold split) of any source's rows, made right
    after loading, before ``where`` filters, so specs with different filters never share rows
    across the split. Stratified by ``label_column`` when the spec has one; with ``group`` no value
    of that column (a speaker, a patient, a molecule scaffold) lands on both sides."""

    take: Literal["train", "test"] = Field(description="which side of the split this spec keeps")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of rows (of groups, with group) "
                                 "held out; ignored with folds")
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

    source: str = Field(description="imagefolder|audiofolder|csv|json|parquet|arrow, a builtin "
                        "(sklearn-digits) or a hub dataset id")
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    data_dir: str | None = None
    split: str = "train"
    columns: dict[str, str] = Field(min_length=1, description="modality -> column name")
    label_column: str | None = None
    caption_templates: list[str] | None = Field(None, description="fill these '{}' templates with each "
                                                "row's class name (from label_column) into a column "
                                                "'label_captions', e.g. to train an imagefolder")
    max_samples: int | None = Field(None, gt=0)
    holdout: HoldoutSpec | None = Field(None, description="seeded (stratified, group-aware) train/test "
                                        "or k-fold split of the loaded rows, for any source")
    load_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra load_dataset arguments, "
                                        "or a builtin source's options")
    where: dict[str, Condition] | None = Field(None, description="keep rows whose columns pass these "
                                               "tests, e.g. {take: {lt: 5}, speaker: {ne: theo}}")
    label_names: list[str] | None = Field(None, description="class names for label_column: an integer "
                                          "label i is label_names[i]; a string label is looked up by "
                                          "name (default: sorted distinct strings)")
    join: JoinSpec | None = None
    pack_columns: dict[str, list[str]] | None = Field(
        None, description="new column -> the columns it packs: each row gets a dict {column: value}, "
                          "e.g. {graph: [edge_index, node_feat, edge_attr, num_nodes]} for a graph "
                          "stored as edge list + feature columns, or {cloud: [points, colors]}")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="a sample that cannot be decoded: raise (naming file and row) or skip and "
                             "count it (training draws another row; evaluation leaves the row out)")

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
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names must be unique: {self.label_names}")
        return self


JoinSpec.model_rebuild()


class DataConfig(Strict):
    train: DatasetSpec
    val: DatasetSpec | None = None
    num_workers: int = Field(0, ge=0)


class TrainConfig(Strict):
    batch_size: int = Field(64, gt=0, description="per-process batch size")
    steps: int = Field(1000, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    compile: bool = False
    checkpoint_every: int = Field(0, ge=0, description="0 = only at the end")
    keep_checkpoints: int | None = Field(None, gt=0)
    log_every: int = Field(10, gt=0)
    val_every: int = Field(0, ge=0, description="validation loss on data.val every N steps; 0 = at the end")
    eval_every: int = Field(0, ge=0, description="run the eval section every N steps (0 = never during "
                                                 "training)")
    eval_at_end: bool = Field(True, description="run the eval section after the last step and write its "
                              "reports to output_dir/eval/")
    best_metric: str | None = Field(None, description="keep checkpoints/best by this eval metric, e.g. "
                                    "'zeroshot/top1' or 'retrieval/image_to_text/R@1' (higher is better)")
    pairs: list[tuple[str, str]] | None = Field(None, description="modality pairs the loss aligns; "
                                                "default: every pair")
    local_loss: bool = True
    progress: bool = True


class ZeroShotSpec(Strict):
    query: str | None = Field(None, description="modality to classify; default: the eval data's one "
                              "modality besides prompt_modality")
    prompt_modality: str = "text"
    classnames: list[str] | dict[str, str] | None = Field(
        None, description="default: the data's class names (ClassLabel / label_names). A list is checked "
                          "against them by name (label i is classnames[i] only when the data has no "
                          "names); a dict maps the data's names to the names put in prompts")
    templates: list[str] | dict[str, list[str]] = Field(
        min_length=1, description="shared '{}' / '{c}' templates, or class -> its own prompts (CuPL)")


    @field_validator("classnames")
    @classmethod
    def _unique_classes(cls, value):
        names = list(value.values()) if isinstance(value, dict) else value
        if names is None:
            return value
        if len(names) < 2:
            raise ValueError("give at least 2 classes (or leave classnames out to take the data's)")
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            raise ValueError(f"classnames must be unique; duplicated: {dupes}")
        return value


class RetrievalSpec(Strict):
    a: str = "image"
    b: str = "text"
    ks: list[PositiveInt] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    positives: Literal["row", "label"] = Field(
        "row", description="row: a b item matches its own row (CLIP_benchmark); label: any row of the "
                           "same class (for templated captions)")
    index: str = Field("Flat", description="FAISS index_factory string for the index-based recall "
                                           "(Flat = exact; e.g. HNSW32 or IVF256,Flat shows the ANN cost)")
    dedupe: bool = Field(True, description="identical b items (templated captions) become one gallery "
                         "item whose positives are the union of their rows'; without it, R@k over k "
                         "copies of one caption is degenerate")


class EvalConfig(Strict):
    data: DatasetSpec
    zeroshot: ZeroShotSpec | None = None
    retrieval: RetrievalSpec | None = None
    batch_size: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _default_query(self) -> "EvalConfig":
        zs = self.zeroshot
        if zs is not None and zs.query is None:
            others = [m for m in self.data.columns if m != zs.prompt_modality]
            if len(others) != 1:
                raise ValueError(f"config key 'eval.zeroshot.query': give the modality to classify, one of "
                                 f"{others or list(self.data.columns)}")
            zs.query = others[0]
        return self


class Config(Strict):
    output_dir: str = "runs/align"
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig | None = None

    @model_validator(mode="after")
    def _check_modalities(self) -> "Config":
        known = set(self.model.modalities)
        specs = [("data.train", self.data.train), ("data.val", self.data.val),
                 ("eval.data", self.eval.data if self.eval else None)]
        for name, spec in specs:
            if spec is None:
                continue
            for mod in spec.columns:
                if mod not in known:
                    raise ValueError(f"config key '{name}.columns.{mod}': modality '{mod}' is not in "
                                     f"model.modalities {sorted(known)}")
        if (self.train.eval_every or self.train.best_metric) and self.eval is None:
            raise ValueError("config key 'train.eval_every': evaluating during training needs an eval section")
        if self.train.best_metric and not self.train.eval_every:
            raise ValueError("config key 'train.best_metric': needs train.eval_every > 0")
        if self.data.val is not None and set(self.data.val.columns) != set(self.data.train.columns):
            raise ValueError("config key 'data.val.columns': must feed the same modalities as "
                             f"data.train.columns {sorted(self.data.train.columns)}")
        for i, pair in enumerate(self.train.pairs or []):
            for mod in pair:
                if mod not in known:
                    raise ValueError(f"config key 'train.pairs[{i}]': modality '{mod}' is not in "
                                     f"model.modalities {sorted(known)}")
                if mod not in self.data.train.columns:
                    raise ValueError(f"config key 'train.pairs[{i}]': modality '{mod}' has no column in "
                                     "data.train.columns")
        if self.eval is not None:  # eval runs after training: catch its mistakes before that
            cols = self.eval.data.columns
            uses = []
            if self.eval.zeroshot is not None:
                uses.append(("eval.zeroshot.query", self.eval.zeroshot.query, cols))
                uses.append(("eval.zeroshot.prompt_modality", self.eval.zeroshot.prompt_modality, known))
            if self.eval.retrieval is not None:
                uses += [("eval.retrieval.a", self.eval.retrieval.a, cols),
                         ("eval.retrieval.b", self.eval.retrieval.b, cols)]
            for key, mod, allowed in uses:
                if mod not in allowed:
                    where = "eval.data.columns" if allowed is cols else "model.modalities"
                    raise ValueError(f"config key '{key}': modality '{mod}' is not in {where} {sorted(allowed)}")
        return self

    def loss_pairs(self) -> list[tuple[str, str]]:
        if self.train.pairs:
            return [tuple(p) for p in self.train.pairs]
        mods = list(self.data.train.columns)
        return [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        if not loc and not prefix and e["type"] == "value_error":  # cross-section checks name their key
            lines.append(str(e["ctx"]["error"]))
            continue
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "<root>"
        msg = "unknown key (misspelled?)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"config key '{key}': {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Apply one ``a.b.c=value`` override in place (value already parsed)."""
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(keys[:i + 1])}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like dotted.key=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def config_from_dict(data: dict, validate_adapters: bool = True) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    if validate_adapters:
        validate_adapter_options(cfg)
    return cfg


def validate_adapter_options(cfg: Config) -> None:
    """Check each modality's options against its adapter's schema (imports the adapter module)."""
    from align.extras import MODALITY_EXTRAS, SOURCE_EXTRAS, require
    from align.registry import ADAPTERS

    specs = [("data.train", cfg.data.train), ("data.val", cfg.data.val), ("eval.data", cfg.eval.data if cfg.eval else None)]
    for key, spec in specs:
        if spec is not None:
            require(SOURCE_EXTRAS, spec.source, f"{key}.source")
    for mod, spec in cfg.model.modalities.items():
        name = spec.adapter_name(mod)
        require(MODALITY_EXTRAS, name, f"model.modalities.{mod}")
        try:
            adapter_cls = ADAPTERS.get(name)
        except KeyError as err:
            raise ConfigError(f"config key 'model.modalities.{mod}.adapter': {err.args[0]}") from None
        try:
            spec.options = adapter_cls.Options.model_validate(spec.options).model_dump(by_alias=True)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, f"model.modalities.{mod}.options.")) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None, validate_adapters: bool = True) -> Config:
    """Read YAML (or start from ``base``), apply ``dotted.key=value`` overrides, validate."""
    data: dict = copy.deepcopy(base or {})  # overrides must not reach into the caller's dict
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    for key, value in parse_overrides(overrides or []):
        set_dotted(data, key, value)
    return config_from_dict(data, validate_adapters=validate_adapters)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
