"""``create_app``: the HTTP service, a thin FastAPI layer over one ``Searcher``.

What each part is for:

* the handlers only parse, enqueue and await: every ``Searcher`` call runs on the ``Batcher``'s
  worker thread (``align.serve.batching``), which batches concurrent requests, so the event loop
  never runs torch and keeps accepting connections during a forward;
* ``GateMiddleware`` (``align.serve.gate``) checks the bearer token and the body size before
  FastAPI reads a byte of the body; ``MetricsMiddleware`` counts every response, refusals included;
* errors have one shape, ``{"detail": "one line"}``: a ``SearchError`` (the ``Searcher``'s own
  message) is 400, a body that does not fit the schema 422 (``errors`` lists each field), a full
  queue 503 with ``Retry-After``;
* ``GET /v1/items/{index}/{id}/file`` (and ``.../render``, a drawing of a molecule or point cloud)
  read only the file the index recorded for that item, never a path from the request; media types a
  browser renders safely (images except SVG, audio, video) are sent inline, anything else as an
  attachment, all with ``nosniff`` and a sandboxing CSP, so a recorded HTML or SVG file cannot run
  script in the page's origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException

from align.errors import AlignError
from align.serve import http_models as m
from align.serve.batching import Batcher, Job, QueueFull, SearcherSource
from align.serve.errors import SearchError
from align.serve.gate import GateMiddleware
from align.serve.inputs import Upload
from align.serve.metrics import Metrics, MetricsMiddleware
from align.serve.reload import IndexReloader
from align.serve.reload_route import reload_routes
from align.serve.searcher import MAX_K

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 32 * 1024 * 1024  # a few images or a short clip per request
INLINE_TYPES = ("image/", "audio/", "video/")  # rendered by a browser without running script (SVG excepted)
FILTERS = TypeAdapter(m.Filters)


def _error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _field_errors(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One line naming each field, and the errors without their ``input`` (a request's 100k-char
    string is not echoed back)."""
    lines, clean = [], []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            lines.append(f"malformed JSON body at character {loc[-1] if loc else '?'}: {reason}")
        else:
            lines.append(f"{'.'.join(loc)}: {err.get('msg')}")
        clean.append({"type": err.get("type"), "loc": loc, "msg": err.get("msg")})
    return "; ".join(lines), clean


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SearchError)
    async def search_error(_: Request, err: SearchError) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, err: QueueFull) -> JSONResponse:
        return _error(503, f"server busy: {err}; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        detail, errors = _field_errors(list(err.errors()))
        return _error(422, detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        headers = dict(err.headers or {})
        if err.status_code == 413:
            headers["Connection"] = "close"  # the rest of the body is not read
        return _error(err.status_code, str(err.detail), headers)


def require_type(expected: str) -> Callable[[Request], None]:
    """A dependency answering 415 unless the body is ``expected`` (``application/json`` or
    ``multipart/form-data``): a JSON body sent as a form would otherwise surface as a confusing 422."""

    def check(request: Request) -> None:
        given = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if given != expected:
            raise HTTPException(415, f"{request.url.path} takes Content-Type {expected}, got {given or 'none'}")

    return check


def form_fields(*allowed: str) -> Callable[[Request], Any]:
    """A dependency refusing form fields the endpoint does not take (422), as the JSON models do."""

    async def check(request: Request) -> None:
        form = await request.form()  # the form FastAPI already parsed (cached on the request)
        unknown = sorted(set(form.keys()) - set(allowed))
        if unknown:
            raise RequestValidationError(
                [
                    {"type": "extra_forbidden", "loc": ("body", name), "msg": "Extra inputs are not permitted"}
                    for name in unknown
                ]
            )

    return check


def _json_form(field: str, raw: str | None, adapter: TypeAdapter | None = None, *, name_ok: bool = False) -> Any:
    """A JSON form field parsed (and validated by ``adapter``); ``name_ok``: a bare string that is
    no JSON is taken as itself (a template set's name)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        if name_ok and raw.strip() and raw.strip()[0] not in '[{"':
            value = raw.strip()
        else:
            raise RequestValidationError(
                [
                    {
                        "type": "json_field_invalid",
                        "loc": ("body", field),
                        "msg": f"form field '{field}' is not JSON: {err}",
                    }
                ]
            ) from None
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", field, *e["loc"])} for e in err.errors(include_input=False)]
        ) from None


async def _uploads(files: list[UploadFile]) -> list[Upload]:
    return [Upload(await f.read(), f.filename or None) for f in files]


async def _run(request: Request, job: Job) -> Any:
    """Hand ``job`` to the worker and wait for it without blocking the event loop."""
    return await asyncio.wrap_future(request.app.state.batcher.submit(job))


def _hits(results: list) -> list[list[dict[str, Any]]]:
    return [
        [{"id": h.id, "score": h.score, "rank": h.rank, "metadata": h.metadata, "index": h.index} for h in hits]
        for hits in results
    ]


def _ms(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 3)


def _item(request: Request, index: str, id_: int) -> dict[str, Any]:
    """The metadata the index recorded for ``id_``; 404 for an unknown index or id."""
    table = request.app.state.items
    if index not in table:
        raise HTTPException(404, f"no index named {index!r} is loaded; loaded: {sorted(table)}")
    emb, ids = table[index]
    if id_ not in ids:
        raise HTTPException(404, f"index {index!r} has no item {id_}")
    return dict(emb.get_metadata(id_))


def _recorded_file(metadata: dict[str, Any]) -> Path | None:
    """The media file the index recorded (metadata ``path``; a relative one is read from the
    server's working directory, as ``align index build`` wrote it), or None when none is there."""
    path = metadata.get("path")
    if not isinstance(path, str) or not path:
        return None
    file = Path(path).expanduser()
    return file if file.is_file() else None


def _v1_routes(router: APIRouter) -> None:
    json_body, multipart = Depends(require_type("application/json")), Depends(require_type("multipart/form-data"))

    @router.get("/health", response_model=m.HealthResponse, response_model_exclude_unset=True, summary="what is loaded")
    async def health(request: Request) -> dict[str, Any]:
        return request.app.state.health

    @router.post("/search", response_model=m.SearchResponse, dependencies=[json_body], summary="search by text")
    async def search(request: Request, body: m.SearchRequest) -> dict[str, Any]:
        start = time.perf_counter()
        job = Job("search", body.modality, body.queries, index=body.index, k=body.k, filters=body.filters)
        return {"results": _hits(await _run(request, job)), "took_ms": _ms(start)}

    @router.post(
        "/search/upload",
        response_model=m.SearchResponse,
        dependencies=[multipart, Depends(form_fields("files", "modality", "index", "k", "filters"))],
        summary="search by uploaded files (one result list per file)",
    )
    async def search_upload(
        request: Request,
        files: list[UploadFile] = File(..., description="one query per file"),
        modality: str = Form(..., description="image, audio, video, pointcloud, graph, ..."),
        index: str | None = Form(None),
        k: int = Form(10, ge=1, le=MAX_K),
        filters: str | None = Form(None, description='JSON, e.g. {"label": ["three", "eight"]}'),
    ) -> dict[str, Any]:
        start = time.perf_counter()
        parsed = _json_form("filters", filters, FILTERS)
        job = Job("search", modality, await _uploads(files), index=index, k=k, filters=parsed)
        return {"results": _hits(await _run(request, job)), "took_ms": _ms(start)}

    @router.post("/encode", response_model=m.EncodeResponse, dependencies=[json_body], summary="embeddings")
    async def encode(request: Request, body: m.EncodeRequest) -> dict[str, Any]:
        embeddings = await _run(request, Job("encode", body.modality, body.items))
        return {"embeddings": embeddings.tolist(), "dim": int(embeddings.shape[1])}

    @router.post("/classify", response_model=m.ClassifyResponse, dependencies=[json_body], summary="zero-shot")
    async def classify(request: Request, body: m.ClassifyRequest) -> dict[str, Any]:
        start = time.perf_counter()
        options = (body.class_names, body.templates, body.prompt_modality, body.adapter)
        result = await _run(request, Job("classify", body.modality, [body.item], classify=options))
        return {"classes": [{"name": n, "probability": p} for n, p in result], "took_ms": _ms(start)}

    @router.post(
        "/classify/upload",
        response_model=m.ClassifyResponse,
        dependencies=[
            multipart,
            Depends(form_fields("file", "modality", "class_names", "templates", "prompt_modality", "adapter")),
        ],
        summary="zero-shot classification of an uploaded file",
    )
    async def classify_upload(
        request: Request,
        file: UploadFile = File(...),
        modality: str = Form(...),
        class_names: str | None = Form(None, description='JSON list, e.g. ["cat", "dog"]; optional with an adapter'),
        templates: str = Form('["{}"]', description="JSON list of templates, or a shipped template set's name"),
        prompt_modality: str = Form("text"),
        adapter: str | None = Form(None, description="a few-shot head saved by `align adapt`"),
    ) -> dict[str, Any]:
        start = time.perf_counter()
        names = None if class_names is None else _json_form("class_names", class_names, TypeAdapter(list[str]))
        prompts = _json_form("templates", templates, TypeAdapter(m.Templates), name_ok=True)
        (upload,) = await _uploads([file])
        job = Job("classify", modality, [upload], classify=(names, prompts, prompt_modality, adapter))
        result = await _run(request, job)
        return {"classes": [{"name": n, "probability": p} for n, p in result], "took_ms": _ms(start)}

    @router.get("/items/{index}/{id}", response_model=m.ItemResponse, summary="an item's recorded metadata")
    async def item(request: Request, index: str, id: int) -> dict[str, Any]:  # noqa: A002 -- the URL's name
        metadata = _item(request, index, id)
        return {"index": index, "id": id, "metadata": metadata, "has_file": _recorded_file(metadata) is not None}

    @router.get(
        "/items/{index}/{id}/file",
        response_class=FileResponse,
        responses={404: {"model": m.ErrorResponse, "description": "no file recorded, or it is gone"}},
        summary="the media file the index recorded for an item",
    )
    async def item_file(request: Request, index: str, id: int) -> FileResponse:  # noqa: A002
        metadata = _item(request, index, id)
        file = _recorded_file(metadata)
        if file is None:
            what = "records no file" if not metadata.get("path") else "recorded a file that is gone"
            raise HTTPException(404, f"index {index!r} {what} for item {id}")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        inline = ctype.startswith(INLINE_TYPES) and ctype != "image/svg+xml"
        headers = dict(SANDBOXED)
        return FileResponse(
            file,
            media_type=ctype if inline else "application/octet-stream",
            filename=file.name,
            content_disposition_type="inline" if inline else "attachment",
            headers=headers,
        )


# what a recorded file or a drawing is sent with: never sniffed into HTML, never allowed to run anything
SANDBOXED = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}


def _render_routes(router: APIRouter) -> None:
    @router.get(
        "/items/{index}/{id}/render",
        response_class=Response,
        responses={404: {"model": m.ErrorResponse, "description": "nothing the server can draw for this item"}},
        summary="a drawing of a molecule / graph / point-cloud item (SVG or PNG)",
    )
    async def item_render(request: Request, index: str, id: int) -> Response:  # noqa: A002
        from align.serve.render import render_item

        metadata = _item(request, index, id)
        modality = request.app.state.health["indexes"][index]["modality"]
        try:  # rdkit / PIL / networkx: off the event loop, and off the model's worker thread
            drawn = await asyncio.to_thread(render_item, modality, metadata)
        except (AlignError, OSError, ValueError) as err:
            raise HTTPException(404, f"index {index!r} item {id}: cannot draw it ({err})") from None
        if drawn is None:
            raise HTTPException(404, f"index {index!r} item {id}: nothing to draw for a {modality} item")
        content, media_type = drawn
        headers = dict(SANDBOXED)
        return Response(content, media_type=media_type, headers=headers)


def _snapshot(app: FastAPI, searcher: Any, errors: dict[str, str] | None = None) -> None:
    """What health and the item endpoints read, taken at start and again when an index was reloaded
    (``align.serve.reload``); ``errors``: each index's ``reload_error``. An index's id set is rebuilt
    only when that index changed."""
    infos, errors, old = searcher.indexes, errors or {}, getattr(app.state, "items", {})
    app.state.health = {
        "status": "ok",
        "checkpoint": str(searcher.checkpoint),
        "modalities": searcher.modalities,
        "indexes": {
            name: {"modality": i.modality, "size": i.size, "dim": i.dim, "spec": i.spec, "fields": list(i.fields)}
            | ({"reload_error": errors[name]} if name in errors else {})
            for name, i in infos.items()
        },
        "adapters": {
            name: {
                "method": h.method,
                "query": h.query,
                "classes": h.classnames,
                "any_classes": h.kind == "prompt" and not h.class_specific,
            }
            for name, h in getattr(searcher, "adapted", {}).items()
        },
    }
    # the loaded indexes' metadata, and their ids as a set
    app.state.items = {
        name: old[name] if old.get(name, (None,))[0] is emb else (emb, frozenset(emb.ids.tolist()))
        for name, emb in searcher.index_items.items()
    }


def create_app(
    searcher_or_factory: SearcherSource,
    *,
    token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    batch_wait_ms: float = 3.0,
    max_batch: int = 64,
    max_queue: int = 1024,
    static_dir: str | Path | None = STATIC_DIR,
    reload_interval: float = 2.0,
) -> FastAPI:
    """The service over a ``Searcher`` (or a callable making one in the worker thread at start-up).
    ``token``: when given, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <token>``.
    ``reload_interval``: seconds between checks of the index folders for a rebuilt one (0: none)."""
    metrics = Metrics()
    batcher = Batcher(
        searcher_or_factory, batch_wait_ms=batch_wait_ms, max_batch=max_batch, max_queue=max_queue, metrics=metrics
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        searcher = await asyncio.to_thread(batcher.start)
        _snapshot(app, searcher)
        refresh = lambda: _snapshot(app, searcher, reloader.errors)  # noqa: E731
        app.state.reloader = reloader = IndexReloader(searcher, metrics=metrics, on_change=refresh)
        reloader.start(reload_interval)
        try:
            yield
        finally:  # uvicorn has answered every in-flight request; anything still queued is answered too
            await asyncio.to_thread(reloader.stop)
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="align serve",
        version="1",
        summary="search, encode and classify with one align checkpoint and its FAISS indexes",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.metrics = batcher, metrics
    _install_error_handlers(app)
    security = [Security(HTTPBearer(auto_error=False))] if token else []  # documents the scheme; the gate checks it
    router = APIRouter(prefix="/v1", responses=m.ERRORS, dependencies=security)
    _v1_routes(router)
    _render_routes(router)
    reload_routes(router)
    app.include_router(router)

    @app.get("/metrics", include_in_schema=False, dependencies=security)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if static_dir is not None and Path(static_dir).is_dir():  # the search page, once it exists
        app.mount("/", StaticFiles(directory=static_dir, html=True), name="static")
    app.add_middleware(GateMiddleware, token=token, max_body_bytes=max_body_bytes)
    fixed = lambda: frozenset(p for p in app.openapi()["paths"] if "{" not in p) | {"/metrics"}
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=fixed)
    return app
