"""The HTTP API: a thin FastAPI layer over opened :class:`~mildnet.search.engine.SearchEngine` objects.

Every answer comes from the engine (``query_image`` / ``query_id`` -> ``SearchResult.to_dict()``), so the app,
the CLI and the API give the same results for the same catalogue, model and query. Errors are JSON
``{"error": "<one line>"}`` with the engine's own messages. Endpoints are plain ``def``: FastAPI runs them in
its thread pool, and the engine is thread-safe for queries.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, some of them local names.
import dataclasses
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from mildnet.data.images import MAX_FILE_BYTES
from mildnet.errors import DataError, ImageError, MildnetError, StoreError
from mildnet.search.engine import Catalogue, FilterError, NotEmbedded, SearchEngine, SearchResult, UnknownId

__all__ = ["API_KEYS_ENV", "Settings", "create_app", "load_api_keys"]

API_KEYS_ENV = "MILDNET_API_KEYS"
MAX_K = 100
# Room for the multipart envelope (boundaries, part headers, the file name) around an upload of the full size.
_ENVELOPE_BYTES = 64 * 1024

log = logging.getLogger("mildnet.api")


@dataclasses.dataclass(frozen=True)
class Settings:
    """``max_upload_bytes``: the largest photo accepted (the app's limit by default); ``max_k``: most results a
    query may ask for; ``api_keys``: keys accepted for writes (none: writes are refused); ``reopen``: a
    catalogue's name -> the catalogue read afresh from disk (its new and removed photos), for reload; without
    it reload only embeds what the catalogue held at start."""

    max_upload_bytes: int = MAX_FILE_BYTES
    max_k: int = MAX_K
    default_k: int = 5
    api_keys: frozenset[str] = frozenset()
    reopen: Callable[[str], Catalogue] | None = None


def load_api_keys(key_file: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> frozenset:
    """The keys of ``$MILDNET_API_KEYS`` (comma-separated) and of ``key_file`` (one a line; blank lines and
    ``#`` comments ignored). DataError for a key file that cannot be read or holds no key."""
    environ = os.environ if environ is None else environ
    keys = {k.strip() for k in environ.get(API_KEYS_ENV, "").split(",") if k.strip()}
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the API key file {key_file}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        found = {line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
        if not found:
            raise DataError(f"the API key file {key_file} holds no key (one a line)")
        keys |= found
    return frozenset(keys)


# -- response models (the OpenAPI schema; answers are built by the engine) -------------------------------------------


class ResultItem(BaseModel):
    """One similar product: the catalogue's columns (product_id, category, colour, title, url...) follow."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(description="the product photo's id: its path relative to the catalogue folder")
    score: float = Field(description="cosine similarity, 1 = identical")
    match: float | None = Field(description="match strength in [0, 1] (null where the catalogue is not calibrated)")


class SearchResponse(BaseModel):
    catalogue: str
    k: int
    query: dict[str, str] = Field(description='{"image": file name} or {"id": product photo id}')
    key: str = Field(description="the store key of the searched embeddings")
    model: str
    n_catalog: int = Field(description="photos searched")
    close_match: bool | None = Field(description="false: no close match in this catalogue; null: not calibrated")
    close_match_reason: str | None
    calibrated: bool
    calibration: str | None = Field(description='"catalogue", "run" or null')
    note: str | None = Field(description="what the scores mean when they are not match strengths")
    results: list[ResultItem]


class CatalogueInfo(BaseModel):
    name: str
    ready: bool
    n_catalog: int = Field(description="photos searchable now (0 until embedded)")
    model: str
    key: str
    columns: list[str] = Field(description="columns results carry and filters may name")
    calibration: str | None = Field(description='"catalogue" when the catalogue has its own calibration')


class CataloguesResponse(BaseModel):
    catalogues: list[CatalogueInfo]


class ReadyResponse(BaseModel):
    ready: bool
    catalogues: dict[str, bool] = Field(description="each catalogue's readiness")
    error: str | None = Field(None, description="which catalogues are not ready (with status 503)")


class ReloadResponse(BaseModel):
    catalogue: str
    status: str = Field(description='"reused" (nothing changed), "updated", "built" or "rebuilt"')
    embedded: int
    removed: int
    n_catalog: int
    seconds: float


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, in one line")


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorResponse} for code in codes}


# -- errors ------------------------------------------------------------------------------------------------------


def _one_line(text: Any) -> str:
    return " ".join(str(text).split()) or "error"


def _status_of(exc: MildnetError) -> int:
    if isinstance(exc, UnknownId):
        return 404
    if isinstance(exc, (NotEmbedded, StoreError)):
        return 503  # the server is up but cannot answer yet (nothing embedded) or its store is down
    if isinstance(exc, (ImageError, FilterError, DataError)):
        return 400
    return 500


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    where = {"query": "query parameter", "path": "path parameter", "body": "form field", "header": "header"}
    name = " ".join(filter(None, [where.get(loc[0], loc[0]) if loc else "", ".".join(loc[1:])]))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _one_line(f"{name}: {first.get('msg', 'invalid')}{more}")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=dict(headers or {}))


def _mb(n: int) -> str:
    return f"{n >> 20} MB" if n % (1 << 20) == 0 else f"{n / (1 << 20):.1f} MB"


class _UploadLimit:
    """Refuses a request body over the upload limit with 413: at once when its Content-Length says so (the
    body is never read), else as soon as the bytes received pass it (a chunked upload), so an oversize upload
    never fills memory or the disk."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.allowed = limit + _ENVELOPE_BYTES

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.allowed:
            message = f"the upload is too large ({int(length) / 1e6:.1f} MB; at most {_mb(self.limit)})"
            await _error(413, message, {"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.allowed:
                    # FastAPI lets an HTTPException raised while it reads the form through to our handler.
                    raise HTTPException(413, f"the upload is too large (more than {_mb(self.limit)})")
            return message

        await self.app(scope, counted, send)


# -- the served catalogues ---------------------------------------------------------------------------------------


class _Catalogues:
    """The engines by catalogue name; reload swaps one whole, so a query sees the old or the new engine."""

    def __init__(self, engines: Iterable[SearchEngine], reopen: Callable[[str], Catalogue] | None) -> None:
        self._engines = {e.catalogue.name: e for e in engines}
        if not self._engines:
            raise ValueError("create_app needs at least one search engine")
        self._reopen = reopen
        self._reloading = {name: threading.Lock() for name in self._engines}

    def all(self) -> list[tuple[str, SearchEngine]]:
        return list(self._engines.items())

    def get(self, name: str | None) -> SearchEngine:
        if name is None:
            if len(self._engines) == 1:
                return next(iter(self._engines.values()))
            raise HTTPException(400, f"several catalogues are served ({', '.join(self._engines)}); "
                                     "name one with ?catalogue=NAME")
        engine = self._engines.get(name)
        if engine is None:
            raise HTTPException(404, f"no catalogue {name!r} is served here (served: {', '.join(self._engines)})")
        return engine

    def reload(self, name: str) -> dict:
        old = self.get(name)
        lock = self._reloading[name]
        if not lock.acquire(blocking=False):
            raise HTTPException(409, f"catalogue {name} is already being reloaded; try again when it is done")
        try:
            start = time.perf_counter()
            catalogue = self._reopen(name) if self._reopen is not None else old.catalogue
            engine = SearchEngine.open(old.model, catalogue, old.store, index=old.index,
                                       index_options=old.index_options)
            pending = engine.pending()
            embedded = removed = 0
            if not pending.up_to_date:
                done = engine.update()
                embedded, removed = done.embedded, done.removed
            self._engines[name] = engine
            return {"catalogue": name, "status": pending.status, "embedded": embedded, "removed": removed,
                    "n_catalog": len(engine) if engine.ready else 0,
                    "seconds": round(time.perf_counter() - start, 3)}
        finally:
            lock.release()


def _parse_filters(values: list[str] | None) -> dict[str, list[str]] | None:
    if not values:
        return None
    filters: dict[str, list[str]] = {}
    for value in values:
        column, sep, wanted = value.partition(":")
        if not sep or not column.strip():
            raise HTTPException(400, f"filter {value!r} is not COLUMN:VALUE (e.g. filter=category:dress)")
        filters.setdefault(column.strip(), []).append(wanted.strip())
    return filters


def _answer(name: str, k: int, result: SearchResult) -> JSONResponse:
    # Returned as a response, not validated against SearchResponse on every query (the tests check the shape).
    return JSONResponse({"catalogue": name, "k": k, **result.to_dict()})


# -- the app -----------------------------------------------------------------------------------------------------

DESCRIPTION = """Visual search over a shop's catalogue: products like a photo, or like a catalogue product.

**Filters** (both searches): repeat `filter=COLUMN:VALUE` (`filter=category:dress&filter=colour:red`); values of
one column are alternatives, several columns must all match; compared as text, case-insensitively. The columns
of each catalogue are listed by `GET /v1/catalogues`.

**Limits**: `k` from 1 to {max_k}; a photo of at most {max_upload}.

**Errors**: JSON `{{"error": "one line"}}`: 400 bad photo or filter, 401 missing or wrong API key, 403 a write to a
server without API keys, 404 unknown product id or catalogue, 409 a reload already running, 413 photo too large,
422 bad parameter, 503 catalogue not embedded yet.

**Writes** (reload) need an API key: header `X-API-Key: KEY` or `Authorization: Bearer KEY`.
"""


def create_app(engines: Iterable[SearchEngine] | Mapping[str, SearchEngine],
               settings: Settings | None = None) -> FastAPI:
    """The API over opened engines (one per catalogue; opened and embedded by the caller)."""
    from mildnet import __version__

    settings = settings or Settings()
    if isinstance(engines, Mapping):
        engines = engines.values()
    catalogues = _Catalogues(engines, settings.reopen)
    app = FastAPI(title="MILDNet visual search", version=__version__,
                  description=DESCRIPTION.format(max_k=settings.max_k, max_upload=_mb(settings.max_upload_bytes)))
    app.state.catalogues = catalogues
    app.state.settings = settings
    app.add_middleware(_UploadLimit, limit=settings.max_upload_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (the endpoints are listed at /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        return _error(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(MildnetError)
    async def refused(request: Request, exc: MildnetError) -> JSONResponse:
        return _error(_status_of(exc), str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    k_query = Annotated[int, Query(ge=1, le=settings.max_k, description=f"results wanted, 1 to {settings.max_k}")]
    filter_query = Annotated[list[str] | None, Query(
        alias="filter", description="COLUMN:VALUE, repeatable (e.g. category:dress); see GET /v1/catalogues")]
    catalogue_query = Annotated[str | None, Query(
        description="the catalogue to search; may be left out when the server serves one")]
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key, for writes")
    bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token, for writes")

    def require_key(key: Annotated[str | None, Security(api_key)],
                    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
        if not settings.api_keys:
            raise HTTPException(403, f"writes are disabled: this server has no API keys (set {API_KEYS_ENV} or "
                                     "start it with --api-key-file)")
        given = key or (token.credentials if token is not None else None)
        if not given:
            raise HTTPException(401, "this needs an API key: send it as X-API-Key: KEY or Authorization: Bearer KEY",
                                {"WWW-Authenticate": "Bearer"})
        # Every key compared in constant time, so timing does not tell how much of a guess was right.
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in settings.api_keys):
            raise HTTPException(401, "the API key is not valid", {"WWW-Authenticate": "Bearer"})

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Every catalogue can be searched", response_model=ReadyResponse,
             response_model_exclude_none=True, responses={503: {"model": ReadyResponse}})
    def readyz():
        states = {name: engine.ready for name, engine in catalogues.all()}
        if all(states.values()):
            return {"ready": True, "catalogues": states}
        waiting = ", ".join(name for name, ok in states.items() if not ok)
        return JSONResponse({"ready": False, "catalogues": states,
                             "error": f"not embedded yet: {waiting} (reload it, or embed it with the same model)"},
                            status_code=503)

    @app.get("/v1/catalogues", tags=["catalogues"], summary="The served catalogues",
             response_model=CataloguesResponse)
    def list_catalogues():
        out = []
        for name, engine in catalogues.all():
            ready = engine.ready
            own = engine.catalogue_calibration[0] if ready else None
            out.append({"name": name, "ready": ready, "n_catalog": len(engine) if ready else 0,
                        "model": engine.model.name, "key": engine.key, "columns": engine.catalogue.columns,
                        "calibration": "catalogue" if own is not None else None})
        return {"catalogues": out}

    @app.post("/v1/search", tags=["search"], summary="Products like a photo", response_model=SearchResponse,
              responses=_errors(400, 404, 413, 422, 503))
    def search_photo(image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, BMP or GIF)")],
                     k: k_query = settings.default_k, filters: filter_query = None,
                     catalogue: catalogue_query = None):
        engine = catalogues.get(catalogue)
        parsed = _parse_filters(filters)
        limit = settings.max_upload_bytes
        data = image.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{image.filename or 'the upload'} is too large (at most {_mb(limit)})")
        result = engine.query_image(data, k=k, filters=parsed, name=image.filename or "upload")
        return _answer(engine.catalogue.name, k, result)

    @app.get("/v1/products/{item_id:path}/similar", tags=["search"], summary="Products like a catalogue product",
             response_model=SearchResponse, responses=_errors(400, 404, 422, 503))
    def search_similar(item_id: str, k: k_query = settings.default_k, filters: filter_query = None,
                       catalogue: catalogue_query = None):
        """``item_id``: the product photo's id as results give it (a path such as ``images/p0007/catalog.jpg``);
        the product's own photo is left out of the results."""
        engine = catalogues.get(catalogue)
        result = engine.query_id(item_id, k=k, filters=_parse_filters(filters))
        return _answer(engine.catalogue.name, k, result)

    @app.post("/v1/catalogues/{name}/reload", tags=["catalogues"], dependencies=[Security(require_key)],
              summary="Re-read a catalogue and embed its new photos (API key)", response_model=ReloadResponse,
              responses=_errors(401, 403, 404, 409, 503))
    def reload(name: str):
        """Re-reads the catalogue from disk, embeds new or changed photos, drops removed ones and refits its
        calibration; queries meanwhile are answered from the catalogue as it was."""
        try:
            return catalogues.reload(name)
        except DataError as exc:
            # The catalogue as it is on disk now cannot be read (folder gone, registry changed): the one
            # served stays, so this is the server's state, not a bad request.
            raise HTTPException(503, f"catalogue {name} could not be reloaded: {exc}") from None

    return app
