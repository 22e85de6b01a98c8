"""Run configuration: plain data (YAML) validated by pydantic before anything heavy starts.

Every section forbids unknown keys, so a misspelled key fails with its dotted path instead of
being silently ignored. Adapter options are validated against the adapter's own schema.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

# the dataset part (DatasetSpec, its filters, joins, holdout) is in align/config/dataset.py
from align.config.dataset import DatasetSpec, MixPart, Strict  # noqa: E402
from align.config.objectives import (
    MomentumSpec,
    MultiwaySpec,
    PairSpec,
    check_objectives,
    pair_specs,
)
from align.config.safe_yaml import load_yaml_file, load_yaml_text
from align.config.tuning import InitFromSpec, LockSpec, LoraSpec
from align.errors import ConfigError
from align.extras import MODALITY_EXTRAS, SOURCE_EXTRAS, require
from align.io.atomic import write_atomic
from align.registry import ADAPTERS


class ModalitySpec(Strict):
    adapter: str | None = Field(None, description="registered adapter name; defaults to the modality name")
    options: dict[str, Any] = Field(default_factory=dict, description="adapter options (the adapter's schema)")
    head: Literal["linear", "mlp", "identity"] = "linear"
    lock: LockSpec | None = Field(None, description="which of the tower's parameters train (align/model/locking.py)")
    lora: LoraSpec | None = Field(None, description="low-rank adapters on the tower (peft); only they train in it")
    cache: Literal["auto", "off", "memory", "disk"] = Field(
        "auto",
        description="a frozen tower with deterministic preprocessing: compute its features "
        "once per training row and reuse them (auto = in memory when it qualifies; disk = a memory-"
        "mapped file under cache_dir keyed by the tower's weights, for sets larger than RAM)",
    )
    cache_dir: str | None = Field(
        None,
        description="where cache: disk keeps its files (default: "
        "<output_dir>/feature_cache); reused by any run with the same tower "
        "weights and rows",
    )

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        """YAML 1.1 reads a bare ``off`` / ``on`` as a boolean."""
        return {False: "off", True: "memory"}.get(value, value) if isinstance(value, bool) else value

    def adapter_name(self, modality: str) -> str:
        return self.adapter or modality


class ModelConfig(Strict):
    embed_dim: int = Field(512, gt=0)
    modalities: dict[str, ModalitySpec] = Field(min_length=1)
    init_from: InitFromSpec | None = Field(
        None, description="start the towers and heads from an align checkpoint: a path, or {path, modalities}"
    )
    loss: str = Field(
        "clip",
        description="the pairwise objective, a name in align.registry.LOSSES "
        "(clip, siglip, multi_positive, dcl, hcl, mochi; a package adds its own under the "
        "align.losses entry points)",
    )
    loss_options: dict[str, Any] = Field(
        default_factory=dict, description="the loss's own options, e.g. {beta: 1.0, tau_plus: 0.1} for hcl"
    )
    pair_temperatures: bool | list[tuple[str, str]] = Field(
        False,
        description="one learnable temperature per aligned pair instead of one shared (resolved to "
        "the run's pairs when the config is loaded)",
    )
    matryoshka_dims: list[PositiveInt] | None = Field(
        None,
        description="Matryoshka: the loss summed over these nested prefixes of the embedding, e.g. [8, 16, 32, 64]",
    )
    momentum: MomentumSpec | None = Field(
        None,
        description="EMA towers + queues of past embeddings as extra "
        "negatives (MoCo / ALBEF), optionally with momentum distillation",
    )
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None
    learn_logit_scale: bool = True
    loss_tiling: Literal["auto", "on", "off"] = Field(
        "auto",
        description="compute the loss in blocks, never holding the [B, B] logits (align.objectives.tiled): "
        "auto = tiled when the global batch (train.batch_size * processes) is at least "
        "loss_tile_above",
    )
    loss_tile_size: int = Field(1024, gt=0, description="rows / columns of one block of logits when tiled")
    loss_tile_above: int = Field(8192, gt=0, description="global batch from which loss_tiling auto tiles")

    @field_validator("init_from", mode="before")
    @classmethod
    def _path_alone(cls, value):
        return {"path": value} if isinstance(value, str) else value

    @field_validator("loss_tiling", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML 1.1 reads a bare ``on`` / ``off`` as a boolean."""
        return ("on" if value else "off") if isinstance(value, bool) else value


class DataConfig(Strict):
    train: DatasetSpec | None = Field(None, description="the training table (or give mix)")
    mix: list[MixPart] | None = Field(
        None,
        min_length=1,
        description="several training sets drawn by "
        "weight, each with its own subset of modalities (instead of train); "
        "each pair's loss uses the rows that have both",
    )
    val: DatasetSpec | None = None
    num_workers: int = Field(0, ge=0)
    cache_samples: bool = Field(
        False,
        description="keep each training row's preprocessed sample in "
        "memory for modalities whose preprocessing is deterministic (graphs "
        "from SMILES, tabular rows, single captions): featurised once, not "
        "every epoch (per DataLoader worker; workers are kept alive)",
    )

    @model_validator(mode="after")
    def _train_or_mix(self) -> "DataConfig":
        if (self.train is None) == (self.mix is None):
            which = "is required" if self.train is None else "and data.mix: give one, not both"
            raise ValueError(f"config key 'data.train' {which} (one training table; data.mix lists several)")
        for i, part in enumerate(self.mix or []):
            if part.data.streaming:
                raise ValueError(
                    f"config key 'data.mix[{i}].data.streaming': a mixture reads whole tables; "
                    "stream one training set with data.train"
                )
        return self

    def train_parts(self) -> list[tuple[str, DatasetSpec, float]]:
        """(config key, spec, sampling weight) of each training set: data.train alone, or data.mix's."""
        if self.mix is None:
            return [("data.train", self.train, 1.0)]
        return [(f"data.mix[{i}].data", p.data, p.weight) for i, p in enumerate(self.mix)]

    def train_modalities(self) -> list[str]:
        """Every modality some training set feeds, in order of first appearance."""
        return list(dict.fromkeys(m for _, spec, _ in self.train_parts() for m in spec.columns))


class TrainConfig(Strict):
    batch_size: int = Field(64, gt=0, description="per-process batch size")
    micro_batch_size: int | None = Field(
        None,
        gt=0,
        description="GradCache: towers hold only this many "
        "samples' activations while the loss sees the whole batch as "
        "negatives (must divide batch_size); None = the whole batch at once",
    )
    grad_checkpointing: bool = Field(
        False,
        description="recompute each tower's activations in the "
        "backward pass instead of storing them (less memory, ~1 more forward)",
    )
    steps: int = Field(1000, gt=0)
    lr: float = Field(5e-4, gt=0)
    tower_lr: dict[str, float] = Field(
        default_factory=dict,
        description="learning rate per tower (its head included), e.g. {image: 1.0e-5}; the others train at train.lr",
    )
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay: a tower's last group (what follows its blocks) trains at "
        "its rate, each group before at this times the next (groups as model.modalities.<m>.lock's)",
    )
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
    eval_every: int = Field(0, ge=0, description="run the eval section every N steps (0 = never during training)")
    eval_at_end: bool = Field(
        True, description="run the eval section after the last step and write its reports to output_dir/eval/"
    )
    best_metric: str | None = Field(
        None,
        description="keep checkpoints/best by this eval metric, e.g. "
        "'zeroshot/top1' or 'retrieval/image_to_text/R@1' (higher is better)",
    )
    pairs: list[PairSpec] | None = Field(
        None,
        description="modality pairs the loss aligns, each [a, b] "
        "or {modalities: [a, b], loss, loss_options, weight}; default: every pair",
    )
    anchor: str | None = Field(
        None, description="ImageBind's binding: every other modality paired only with this one (instead of pairs)"
    )
    multiway: MultiwaySpec | None = Field(None, description="a term over >= 3 modalities at once (symile, gram)")
    local_loss: bool = True
    progress: bool = True

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainConfig":
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"config key 'train.micro_batch_size': {self.micro_batch_size} does not divide "
                f"train.batch_size {self.batch_size}; every micro-batch must be full"
            )
        return self


class ZeroShotSpec(Strict):
    query: str | None = Field(
        None, description="modality to classify; default: the eval data's one modality besides prompt_modality"
    )
    prompt_modality: str = "text"
    classnames: list[str] | dict[str, str] | None = Field(
        None,
        description="default: the data's class names (ClassLabel / label_names). A list is checked "
        "against them by name (label i is classnames[i] only when the data has no "
        "names); a dict maps the data's names to the names put in prompts",
    )
    templates: list[str] | dict[str, list[str]] = Field(
        min_length=1, description="shared '{}' / '{c}' templates, or class -> its own prompts (CuPL)"
    )
    adapter: str | None = Field(
        None,
        description="a few-shot head file `align adapt` wrote (<checkpoint>/adapted/*.safetensors) that "
        "classifies instead of the templates; shared learned context (coop, cocoop) takes any class names",
    )

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
        "row",
        description="row: a b item matches its own row (CLIP_benchmark); label: any row of the "
        "same class (for templated captions)",
    )
    index: str = Field(
        "Flat",
        description="FAISS index_factory string for the index-based recall "
        "(Flat = exact; e.g. HNSW32 or IVF256,Flat shows the ANN cost)",
    )
    dedupe: bool = Field(
        True,
        description="identical b items (templated captions) become one gallery "
        "item whose positives are the union of their rows'; without it, R@k over k "
        "copies of one caption is degenerate",
    )


class ProbeSpec(Strict):
    """``eval.probe``: a linear probe on frozen embeddings (CLIP_benchmark's ``linear_probe``)."""

    query: str | None = Field(
        None, description="modality to classify; default: eval.zeroshot.query, else the eval data's one modality"
    )
    data: DatasetSpec | None = Field(
        None, description="the labelled rows the probe is fitted on; default: the run's data.train"
    )
    shots: int | None = Field(
        None, gt=0, description="fit on this many seeded rows per class (few-shot probe); None = every row"
    )
    seed: int = Field(0, description="the seed of the per-class draw and of the cross-validation folds")
    folds: int = Field(5, ge=2, description="at most this many cross-validation folds choose the regularisation C")


class EvalConfig(Strict):
    data: DatasetSpec
    dim: int | None = Field(
        None,
        gt=0,
        description="evaluate only the embedding's first dim dimensions, "
        "re-normalised (a model trained with model.matryoshka_dims); None = all",
    )
    zeroshot: ZeroShotSpec | None = None
    retrieval: RetrievalSpec | None = None
    probe: ProbeSpec | None = None
    batch_size: int = Field(256, gt=0)
    control: list[str] | None = Field(
        None,
        description="forgetting: eval configs (YAML files with an eval section) of sets the run does not train "
        "on, evaluated before the first step and after the last, side by side (align/eval/control.py)",
    )
    control_max_drop: float = Field(
        0.02, ge=0, description="warn when a control metric falls by more than this (absolute) during the run"
    )

    @model_validator(mode="after")
    def _default_query(self) -> "EvalConfig":
        zs = self.zeroshot
        if zs is not None and zs.query is None:
            others = [m for m in self.data.columns if m != zs.prompt_modality]
            if len(others) != 1:
                raise ValueError(
                    f"config key 'eval.zeroshot.query': give the modality to classify, one of "
                    f"{others or list(self.data.columns)}"
                )
            zs.query = others[0]
        pr = self.probe
        if pr is not None and pr.query is None:
            others = [m for m in self.data.columns if zs is None or m != zs.prompt_modality]
            if zs is not None:
                pr.query = zs.query
            elif len(others) == 1:
                pr.query = others[0]
            else:
                raise ValueError(f"config key 'eval.probe.query': give the modality to classify, one of {others}")
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
        specs = [(k, spec) for k, spec, _ in self.data.train_parts()]
        specs += [("data.val", self.data.val), ("eval.data", self.eval.data if self.eval else None)]
        for name, spec in specs:
            if spec is None:
                continue
            if spec.streaming and name != "data.train":
                raise ValueError(
                    f"config key '{name}.streaming': only data.train streams; validation and evaluation "
                    "read a finite table (read the shards whole: the same spec with streaming: false)"
                )
            for mod in spec.columns:
                if mod not in known:
                    raise ValueError(
                        f"config key '{name}.columns.{mod}': modality '{mod}' is not in "
                        f"model.modalities {sorted(known)}"
                    )
        if (self.train.eval_every or self.train.best_metric) and self.eval is None:
            raise ValueError("config key 'train.eval_every': evaluating during training needs an eval section")
        if self.train.best_metric and not self.train.eval_every:
            raise ValueError("config key 'train.best_metric': needs train.eval_every > 0")
        if self.data.mix is not None:
            if self.data.val is not None and not set(self.data.val.columns) <= set(self.data.train_modalities()):
                raise ValueError(
                    "config key 'data.val.columns': feeds modalities no training set has "
                    f"({sorted(set(self.data.val.columns) - set(self.data.train_modalities()))})"
                )
            mixture_limits(self)
        elif self.data.val is not None and set(self.data.val.columns) != set(self.data.train.columns):
            raise ValueError(
                "config key 'data.val.columns': must feed the same modalities as "
                f"data.train.columns {sorted(self.data.train.columns)}"
            )
        check_objectives(self)
        if self.model.pair_temperatures is True:  # stored resolved: the model's parameters follow it
            self.model.pair_temperatures = self.loss_pairs()
        dims = self.model.matryoshka_dims or []
        if dims and (sorted(set(dims)) != dims or dims[-1] > self.model.embed_dim):
            raise ValueError(
                f"config key 'model.matryoshka_dims': {dims} must increase and end at or below "
                f"model.embed_dim {self.model.embed_dim}"
            )
        if self.eval is not None:  # eval runs after training: catch its mistakes before that
            cols = self.eval.data.columns
            uses = []
            if self.eval.zeroshot is not None:
                uses.append(("eval.zeroshot.query", self.eval.zeroshot.query, cols))
                uses.append(("eval.zeroshot.prompt_modality", self.eval.zeroshot.prompt_modality, known))
            if self.eval.retrieval is not None:
                uses += [
                    ("eval.retrieval.a", self.eval.retrieval.a, cols),
                    ("eval.retrieval.b", self.eval.retrieval.b, cols),
                ]
            if self.eval.probe is not None:
                probe = self.eval.probe
                if probe.data is None:  # the probe is fitted on the run's training rows
                    if self.data.train is None:
                        raise ValueError("config key 'eval.probe.data': give the probe's rows (no data.train)")
                    probe.data = self.data.train.model_copy(deep=True)
                if probe.data.streaming:
                    raise ValueError(
                        "config key 'eval.probe.data.streaming': the probe is fitted on a finite table "
                        "(give eval.probe.data with streaming: false)"
                    )
                uses.append(("eval.probe.query", probe.query, cols))
                uses.append(("eval.probe.data.columns", probe.query, probe.data.columns))
            for key, mod, allowed in uses:
                if mod not in allowed:
                    where = {id(cols): "eval.data.columns", id(known): "model.modalities"}.get(
                        id(allowed), key.rsplit(".", 1)[0] + " columns"
                    )
                    raise ValueError(f"config key '{key}': modality '{mod}' is not in {where} {sorted(allowed)}")
        return self

    def loss_pairs(self) -> list[tuple[str, str]]:
        """The aligned modality pairs (``align.config.objectives.pair_specs`` has their losses and weights)."""
        return [tuple(p.modalities) for p in pair_specs(self)]


def mixture_limits(cfg: "Config") -> None:
    """What a ``data.mix`` run cannot combine with yet, each naming its key and why."""
    for mod, spec in cfg.model.modalities.items():
        if spec.cache in ("memory", "disk"):
            raise ValueError(
                f"config key 'model.modalities.{mod}.cache': cannot be combined with data.mix: "
                "the feature cache is indexed by the rows of one table"
            )


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        own = str(e["ctx"]["error"]) if e["type"] == "value_error" else ""
        if (not loc and not prefix and own) or own.startswith("config key '"):  # checks that name their key
            lines.append(own)
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
            raise ConfigError(f"override '{dotted}': '{'.'.join(keys[: i + 1])}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like dotted.key=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), load_yaml_text(raw, f"override '{item}'")))
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
    specs = [(k, spec) for k, spec, _ in cfg.data.train_parts()]
    specs += [("data.val", cfg.data.val), ("eval.data", cfg.eval.data if cfg.eval else None)]
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


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
    validate_adapters: bool = True,
) -> Config:
    """Read YAML (or start from ``base``), apply ``dotted.key=value`` overrides, validate."""
    data: dict = copy.deepcopy(base or {})  # overrides must not reach into the caller's dict
    if path is not None:
        path = Path(path)
        loaded = load_yaml_file(path)  # bounded: an alias bomb or a huge file is refused, naming it
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    for key, value in parse_overrides(overrides or []):
        set_dotted(data, key, value)
    return config_from_dict(data, validate_adapters=validate_adapters)


def dump_config(cfg: Config, path: str | Path) -> None:
    write_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
