"""Metadata filters: ``{field: value}`` or ``{field: [allowed values]}`` -> the ids of matching items.

Values compare exactly, as JSON sees them (``3`` is not ``"3"``, ``True`` is not ``1``): an index's
metadata came from JSON, and a lenient match would make one filter mean different things on two
indexes. Because labels are often stored by name (``{"label": "three"}``), a value that matches
nothing *and* is of a type the field never holds is an error that shows the field's values, rather
than a silent empty result; an unknown field is an error listing the fields the index has.

Matching ids come from a per-field inverted index (value -> ids), built on first use of the field,
so a filter costs a dictionary lookup per allowed value rather than a scan of every item.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from align.serve.errors import SearchError

SCALARS = (str, int, float, bool, type(None))


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _kind(value: Any) -> str:
    """JSON type of a value: a filter of the wrong one on a field is almost always a mistake."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return type(value).__name__


class MetadataFilter:
    """The fields of one index's metadata and, per field used so far, value -> ids."""

    def __init__(
        self, ids: np.ndarray, metadata: Callable[[int], dict], name: str, fields: list[str] | None = None
    ) -> None:
        self.name = name
        self._ids = ids
        self._meta = metadata
        # ``fields``: what the index recorded (EmbeddingIndex.metadata_fields), else a scan of every item
        self.fields: list[str] = (
            sorted(fields) if fields is not None else sorted({f for i in ids.tolist() for f in metadata(i)})
        )
        self._by_field: dict[str, tuple[dict[str, np.ndarray], set[str], list[Any]]] = {}

    def _field(self, field: str) -> tuple[dict[str, np.ndarray], set[str], list[Any]]:
        if field not in self._by_field:
            groups: dict[str, list[int]] = {}
            examples: dict[str, Any] = {}
            for i in self._ids.tolist():
                meta = self._meta(i)
                if field in meta:
                    key = _key(meta[field])
                    groups.setdefault(key, []).append(i)
                    examples.setdefault(key, meta[field])
            kinds = {_kind(v) for v in examples.values()}
            self._by_field[field] = (
                {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()},
                kinds,
                list(examples.values())[:5],
            )
        return self._by_field[field]

    def allowed(self, filters: Mapping[str, Any]) -> np.ndarray:
        """Sorted ids of the items whose metadata satisfies every field's condition (AND over fields,
        OR over a field's list of values)."""
        if not isinstance(filters, Mapping) or not filters:
            raise SearchError(f"filters must be a non-empty dict of metadata field -> value, got {filters!r}")
        unknown = [f for f in filters if f not in self.fields]
        if unknown:
            raise SearchError(f"index '{self.name}' has no metadata field(s) {unknown}; its fields are {self.fields}")
        result: np.ndarray | None = None
        for field, wanted in filters.items():
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            if not values:
                raise SearchError(f"filter '{field}': an empty list of allowed values allows nothing")
            bad = [v for v in values if not isinstance(v, SCALARS)]
            if bad:
                raise SearchError(
                    f"filter '{field}': values must be strings, numbers, booleans or null, got {bad[0]!r}"
                )
            groups, kinds, examples = self._field(field)
            hits = [groups[_key(v)] for v in values if _key(v) in groups]
            if not hits and not any(_kind(v) in kinds for v in values):
                raise SearchError(
                    f"filter '{field}': {wanted!r} matches no item of index '{self.name}', whose '{field}' "
                    f"values are {'/'.join(sorted(kinds))} (e.g. {examples})"
                )
            ids = np.unique(np.concatenate(hits)) if hits else np.empty(0, np.int64)
            result = ids if result is None else np.intersect1d(result, ids, assume_unique=True)
        return result
