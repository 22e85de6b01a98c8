"""A small client for a running ``align serve``: what ``align query --server URL`` uses.

Standard library only (``urllib``), so asking a service imports neither torch nor the serve extra:
the point of ``--server`` is a query in milliseconds, not a model load. A text query is ``POST
/v1/search`` (JSON); a file query (a path that exists, for any other modality) is uploaded as
``POST /v1/search/upload`` (multipart), so the server reads the bytes, never a path of the client's.
"""

from __future__ import annotations

import json
import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any
from urllib import error, request

from align.serve.errors import SearchError

TOKEN_ENV = "ALIGN_SERVE_TOKEN"


def _call(url: str, body: bytes, content_type: str, token: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = request.Request(url, data=body, headers=headers, method="POST")
    try:
        with request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 -- the user's own server URL
            return json.loads(resp.read())
    except error.HTTPError as err:
        try:
            detail = json.loads(err.read()).get("detail")
        except (ValueError, AttributeError):
            detail = None
        raise SearchError(f"{url}: HTTP {err.code}: {detail if detail is not None else err.reason}") from None
    except (error.URLError, OSError) as err:
        raise SearchError(f"{url}: cannot reach the server ({getattr(err, 'reason', err)})") from None


def _multipart(fields: dict[str, str], path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    )
    parts += [head.encode(), path.read_bytes(), f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def remote_search(
    server: str,
    modality: str,
    raw: str,
    k: int = 5,
    *,
    index: str | None = None,
    filters: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """One query's hits from a running service: ``[{id, score, rank, metadata, index}, ...]``."""
    base = server.rstrip("/")
    token = token or os.environ.get(TOKEN_ENV)
    if modality != "text" and Path(raw).is_file():
        fields = {"modality": modality, "k": str(k)}
        if index:
            fields["index"] = index
        if filters:
            fields["filters"] = json.dumps(filters)
        body, ctype = _multipart(fields, Path(raw))
        answer = _call(f"{base}/v1/search/upload", body, ctype, token, timeout)
    else:
        payload: dict[str, Any] = {"modality": modality, "queries": [raw], "k": k}
        if index:
            payload["index"] = index
        if filters:
            payload["filters"] = filters
        answer = _call(f"{base}/v1/search", json.dumps(payload).encode(), "application/json", token, timeout)
    return answer["results"][0]
