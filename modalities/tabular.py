"""Tabular adapter: one row of numeric features -> a small MLP, trained from scratch.

preprocess (``TabularPreprocessor``, in the DataLoader workers): the raw sample is a flat list /
  tuple / numpy array / torch tensor of numbers, a single number, or a dict of named numeric
  columns (taken in the order of the ``columns`` option; keys beyond them are ignored). It becomes
  float32 ``[num_features]``, standardised as ``(x - mean) / std``. A wrong width, a nested or empty
  row, NaN / inf, a missing column or a value that is not a number (a string, None, ...) is a
  ``SampleError`` naming the feature (by column name when ``columns`` is given, else by index).
  Nothing is random: training and evaluation preprocess alike. Collate stacks to ``[B, num_features]``.
fit (``TabularAdapter.fit``, before the model is built): from the training column's raw values,
  whichever of ``columns`` (dict rows: the first row's keys), ``num_features`` (the most common row
  width), ``mean`` and ``std`` (population std, as scikit-learn's ``StandardScaler``; a std below
  1e-6, a constant column, becomes 1.0) the config left unset. Rows that cannot be read (bad values,
  another width) are left out of the statistics with a warning; preprocessing then raises for them
  or skips them per the spec's ``on_error``. The fitted values are plain lists / ints, saved with
  the run's config, so a reloaded model standardises exactly as the trained one did.
trunk (``encoder: mlp``): for each of ``widths``: Linear -> norm (layer / batch / none) -> ReLU ->
  dropout; ``feature_dim = widths[-1]``.

Building the adapter needs ``num_features`` and, with ``standardize`` (default), ``mean`` and
``std``: the trainer fills them with ``fit``; without training (e.g. ``build_adapter``) give them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from numbers import Number
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import nn

from align.errors import ConfigError, SampleError
from align.modalities.base import AdapterOptions, ModalityAdapter, Preprocessor
from align.modalities.layers import norm_layer
from align.registry import ADAPTERS

log = logging.getLogger("align.modalities.tabular")

STD_FLOOR = 1e-6  # a fitted std below this (a constant column) becomes 1.0


class TabularOptions(AdapterOptions):
    num_features: int | None = Field(None, gt=0, description="input width; fitted from the training data when left out")
    columns: list[str] | None = Field(
        None,
        min_length=1,
        description="dict rows: the named columns, in order; fitted from the first training row when left out",
    )
    standardize: bool = Field(True, description="(x - mean) / std per feature")
    mean: list[float] | None = Field(None, description="per-feature mean; fitted when left out")
    std: list[float] | None = Field(None, description="per-feature std (> 0); fitted when left out")
    encoder: Literal["mlp"] = "mlp"
    widths: list[PositiveInt] = Field(
        default_factory=lambda: [128, 128], min_length=1, description="MLP layer widths; feature_dim is the last"
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    norm: Literal["layer", "batch", "none"] = "layer"

    @field_validator("columns")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            dupes = sorted({c for c in value if value.count(c) > 1})
            if dupes:
                raise ValueError(f"columns must be unique; duplicated: {dupes}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TabularOptions":
        if not self.standardize and (self.mean is not None or self.std is not None):
            raise ValueError("mean / std are given but standardize is false")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            if not values:
                raise ValueError(f"{key} is empty")
            bad = [i for i, v in enumerate(values) if not math.isfinite(v) or (key == "std" and v <= 0)]
            if bad:
                raise ValueError(
                    f"{key} must be finite{' and > 0' if key == 'std' else ''}; "
                    f"entries {bad[:5]} are {[values[i] for i in bad[:5]]}"
                )
        widths = {
            key: len(v)
            for key, v in (("columns", self.columns), ("mean", self.mean), ("std", self.std))
            if v is not None
        }
        if self.num_features is not None:
            widths = {"num_features": self.num_features, **widths}
        if len(set(widths.values())) > 1:
            raise ValueError(
                f"the input width disagrees: {', '.join(f'{k} {v}' for k, v in widths.items())} "
                "(lengths of columns / mean / std must equal num_features)"
            )
        return self


# ------------------------------------------------------------------------------------------------
# reading a row (workers and fit)
# ------------------------------------------------------------------------------------------------


def _feature(i: int, columns: list[str] | None) -> str:
    return f"feature {i} ({columns[i]!r})" if columns is not None and i < len(columns) else f"feature {i}"


def _not_number(value: Any) -> bool:
    return isinstance(value, (str, bytes, complex, np.complexfloating)) or not isinstance(
        value, (Number, np.number, np.bool_)
    )


def _scalar(v: Any) -> Any:
    """A one-element tensor / array as its Python value; anything else unchanged."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.reshape(()).item()
    return v.item() if isinstance(v, np.generic) else v


def _numbers(values: list, columns: list[str] | None) -> np.ndarray:
    """Python values, each checked to be a real number (not a string, None, complex, ...)."""
    for i, v in enumerate(values):
        if _not_number(v):
            raise SampleError(f"{_feature(i, columns)} is not a number: {v!r:.60} ({type(v).__name__})")
    return np.asarray([float(v) for v in values], dtype=np.float64)


def read_row(raw: Any, columns: list[str] | None) -> np.ndarray:
    """A raw sample -> float64 [F] (width unchecked; finite values are checked by the caller)."""
    if isinstance(raw, dict):
        if columns is None:
            raise SampleError(
                f"a row given as a dict of columns ({sorted(map(str, raw))[:8]}) needs the "
                "tabular option 'columns' (their order); fit sets it from the training data"
            )
        missing = [c for c in columns if c not in raw]
        if missing:
            raise SampleError(f"row has no column(s) {missing[:8]} (has {sorted(map(str, raw))[:12]})")
        return _numbers([_scalar(raw[c]) for c in columns], columns)
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    if isinstance(raw, (Number, np.number, np.bool_)) and not _not_number(raw):
        raw = [raw]
    if isinstance(raw, (list, tuple)) and not any(
        isinstance(v, (list, tuple, dict, np.ndarray, torch.Tensor)) for v in raw
    ):
        arr = _numbers([_scalar(v) for v in raw], columns)  # type-checked before numpy turns 1 into '1'
    elif isinstance(raw, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(raw)
        except ValueError as err:  # ragged nesting
            raise SampleError(f"a tabular row must be a flat list of numbers: {err}") from None
        if arr.ndim != 1:
            raise SampleError(f"a tabular row must be flat [num_features], got shape {list(arr.shape)}")
        if arr.dtype.kind not in "biuf":  # strings, objects, complex
            arr = _numbers([_scalar(v) for v in arr], columns)
    else:
        raise SampleError(
            "a tabular row must be a list / array / tensor of numbers or a dict of named "
            f"columns, got {type(raw).__name__} {raw!r:.60}"
        )
    if arr.size == 0:
        raise SampleError("empty row: no features")
    return arr.astype(np.float64)


def check_finite(x: np.ndarray, columns: list[str] | None) -> None:
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        what = [f"{_feature(int(i), columns)} is {'NaN' if np.isnan(x[i]) else 'inf'}" for i in bad[:5]]
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise SampleError(", ".join(what) + more)


class TabularPreprocessor(Preprocessor):
    """raw row -> checked float64 [F] -> (x - mean) / std -> float32 [num_features]."""

    deterministic = True  # no augmentation: training and evaluation preprocess alike

    def __init__(self, o: TabularOptions) -> None:
        check_fitted(o)
        self.o = o
        self.mean = np.asarray(o.mean, dtype=np.float64) if o.standardize else None
        self.std = np.asarray(o.std, dtype=np.float64) if o.standardize else None

    def __call__(self, raw: Any, *, train: bool) -> torch.Tensor:
        x = read_row(raw, self.o.columns)
        if x.shape[0] != self.o.num_features:
            raise SampleError(f"row has {x.shape[0]} features, expected {self.o.num_features} (num_features)")
        check_finite(x, self.o.columns)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        too_big = np.flatnonzero(np.abs(x) > np.finfo(np.float32).max)
        if len(too_big):
            i = int(too_big[0])
            raise SampleError(f"{_feature(i, self.o.columns)} = {x[i]:g} after standardisation does not fit in float32")
        return torch.from_numpy(x.astype(np.float32))

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)


def check_fitted(o: TabularOptions) -> None:
    """The options the trainer fits must be there before a model or preprocessor is built."""
    missing = [k for k in ("num_features",) if getattr(o, k) is None]
    if o.standardize:
        missing += [k for k in ("mean", "std") if getattr(o, k) is None]
    if missing:
        raise ConfigError(
            f"tabular adapter: option(s) {missing} are not set. They are learnt from the training data "
            "by TabularAdapter.fit, which the trainer calls before building the model; this model was "
            "built without it. Set them in model.modalities.<name>.options (or standardize: false to "
            "train on raw values)"
        )


# ------------------------------------------------------------------------------------------------
# encoder
# ------------------------------------------------------------------------------------------------


@ADAPTERS.register("tabular")
class TabularAdapter(ModalityAdapter):
    Options = TabularOptions

    def __init__(self, options: TabularOptions) -> None:
        super().__init__(options)
        o = self.options
        check_fitted(o)
        layers: list[nn.Module] = []
        width = o.num_features
        for w in o.widths:
            layers += [nn.Linear(width, w), norm_layer(o.norm, w), nn.ReLU(inplace=True), nn.Dropout(o.dropout)]
            width = w
        self.mlp = nn.Sequential(*layers)
        self.feature_dim = o.widths[-1]

    @classmethod
    def fit(cls, options: TabularOptions | dict, values: list[Any]) -> dict[str, Any]:
        """``columns`` / ``num_features`` / ``mean`` / ``std``, whichever ``options`` leaves unset,
        from the training column's raw rows (plain lists / ints; {} when nothing is left to fit)."""
        o = options if isinstance(options, TabularOptions) else cls.Options.model_validate(options)
        todo = [k for k in ("columns", "num_features") if getattr(o, k) is None]
        if o.standardize:
            todo += [k for k in ("mean", "std") if getattr(o, k) is None]
        columns = o.columns
        if columns is None:
            first = next((v for v in values if isinstance(v, dict)), None)
            columns = list(first) if first is not None else None
        fitted: dict[str, Any] = {}
        if "columns" in todo and columns is not None:
            fitted["columns"] = [str(c) for c in columns]
        todo = [k for k in todo if k != "columns"]
        if not todo:
            return fitted
        rows, bad = [], {}
        for i, raw in enumerate(values):
            try:
                x = read_row(raw, columns)
                check_finite(x, columns)
            except SampleError as err:
                bad.setdefault(i, str(err))
                continue
            rows.append((i, x))
        width = o.num_features or (len(columns) if columns is not None else None)
        if width is None and rows:
            width = Counter(len(x) for _, x in rows).most_common(1)[0][0]
        for i, x in rows:
            if len(x) != width:
                bad[i] = f"row has {len(x)} features, expected {width}"
        good = [x for i, x in rows if i not in bad]
        if not good:
            first = next(iter(bad.items()), None)
            raise SampleError(
                f"tabular fit: no usable training rows among {len(values)}"
                + (f" (row {first[0]}: {first[1]})" if first else "")
            )
        if bad:
            (i, why), n = next(iter(sorted(bad.items()))), len(bad)
            log.warning(
                "tabular fit: left %d of %d training rows out of the statistics (first: row %d: %s)",
                n,
                len(values),
                i,
                why,
            )
        if "num_features" in todo:
            fitted["num_features"] = int(width)
        table = np.stack(good)
        if "mean" in todo:
            fitted["mean"] = [float(v) for v in table.mean(0)]
        if "std" in todo:
            std = table.std(0)
            fitted["std"] = [float(v) if v >= STD_FLOOR else 1.0 for v in std]
        return fitted

    def preprocessor(self) -> TabularPreprocessor:
        return TabularPreprocessor(self.options)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.mlp(batch)
