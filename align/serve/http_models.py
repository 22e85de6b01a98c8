"""The request and response bodies of ``align serve``, as pydantic models that forbid unknown keys.

Why strict: a misspelled key (``"querys"``, ``"filter"``) silently ignored would answer a different
question than the one asked; refused, it is a 422 naming the key. These models are also what
FastAPI's ``/openapi.json`` documents, so the schema a client reads is the one the server checks.
Bounds that depend on the loaded ``Searcher`` (its ``max_text_chars``, an index's fields) are checked
by the ``Searcher`` itself (400 with its message); the static ones (``k``, batch length) are here.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from align.serve.searcher import MAX_BATCH, MAX_K

FilterValue = Union[str, int, float, bool, None]
Filters = dict[str, Union[FilterValue, list[FilterValue]]]
Templates = Union[list[str], dict[str, list[str]], str]


class Strict(BaseModel):
    """Unknown keys are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class SearchRequest(Strict):
    """Text-like queries (captions, SMILES, ...) sent as JSON strings."""

    index: str | None = Field(None, description="a loaded index's name; may be left out when one is loaded")
    modality: str = Field("text", description="the queries' modality (one the checkpoint encodes)")
    queries: list[str] = Field(..., min_length=1, max_length=MAX_BATCH, description="one result list per query")
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="hits per query")
    filters: Filters | None = Field(
        None, description="metadata field -> value, or list of allowed values; every field must match"
    )


class Hit(Strict):
    id: int
    score: float = Field(..., description="cosine similarity")
    rank: int = Field(..., description="1 = best")
    metadata: dict[str, Any] = Field(..., description="what `align index build` recorded: row, path, label, ...")
    index: str


class SearchResponse(Strict):
    results: list[list[Hit]] = Field(..., description="per query, its hits best first")
    took_ms: float


class EncodeRequest(Strict):
    modality: str = "text"
    items: list[str] = Field(..., min_length=1, max_length=MAX_BATCH)


class EncodeResponse(Strict):
    embeddings: list[list[float]] = Field(..., description="unit-norm, one row per item")
    dim: int


class ClassifyRequest(Strict):
    modality: str = "text"
    item: str
    class_names: list[str] | None = Field(
        None, min_length=2, description="required unless an adapter is named (its own classes are the default)"
    )
    templates: Templates = Field(
        default_factory=lambda: ["{}"],
        description="prompt templates with '{}', a dict class -> prompts, or a shipped template set's name",
    )
    prompt_modality: str = "text"
    adapter: str | None = Field(
        None, description="a few-shot head saved by `align adapt` (GET /v1/health lists them) instead of the templates"
    )


class ClassScore(Strict):
    name: str
    probability: float


class ClassifyResponse(Strict):
    classes: list[ClassScore] = Field(..., description="most probable first; probabilities sum to 1")
    took_ms: float


class IndexSummary(Strict):
    modality: str | None
    size: int
    dim: int
    spec: str
    fields: list[str] = Field(..., description="metadata fields a filter may name")
    reload_error: str | None = Field(
        None, description="present while the folder on disk failed to reload: why (the loaded one still serves)"
    )


class AdapterSummary(Strict):
    method: str = Field(..., description="linear-probe, zs-probe, tip-adapter(-f), coop, coop-csc or cocoop")
    query: str = Field(..., description="the modality it classifies")
    classes: list[str]
    any_classes: bool = Field(..., description="shared learned context: class_names may name other classes")


class HealthResponse(Strict):
    status: Literal["ok"]
    checkpoint: str
    modalities: list[str]
    indexes: dict[str, IndexSummary]
    adapters: dict[str, AdapterSummary] = Field(default_factory=dict)


class ReloadResponse(Strict):
    index: str
    result: Literal["reloaded", "unchanged", "error"] = Field(
        ..., description="error: the folder on disk was not loaded and the previous index still serves"
    )
    size: int = Field(..., description="items in the index serving now")
    previous_size: int = Field(..., description="items in the index that served before the check")
    error: str | None = Field(None, description="why the folder was not loaded (error only)")


class ItemResponse(Strict):
    index: str
    id: int
    metadata: dict[str, Any]
    has_file: bool = Field(..., description="whether GET .../file can serve the media file the index recorded")


class ErrorResponse(Strict):
    detail: str = Field(..., description="what was wrong, in one line")
    errors: list[dict[str, Any]] | None = Field(None, description="validation errors, one per field (422 only)")


ERRORS = {
    400: {"model": ErrorResponse, "description": "a request the Searcher refuses (its message says why)"},
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token (when one is configured)"},
    413: {"model": ErrorResponse, "description": "body larger than the server's limit"},
    415: {"model": ErrorResponse, "description": "wrong Content-Type"},
    422: {"model": ErrorResponse, "description": "the body does not match the schema (fields named)"},
    503: {"model": ErrorResponse, "description": "the work queue is full; retry after Retry-After seconds"},
}
