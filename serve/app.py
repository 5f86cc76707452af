"""The HTTP app (Starlette): the three rerank routes, /health, /ready, /info, /metrics.

The same app runs embedded (uvicorn; the Scheduler batches) and as Ray Serve's ingress (model replicas behind a
deployment handle; @serve.batch batches): only the Engine differs. The model loads in the background, so /health
answers at once and /ready says 503 until the model is loaded and one warm-up batch has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from rerank_runtime._deps import require

from .metrics import Metrics
from .schemas import ROUTES, TEI, RankRequest, ServeError, check_limits, invalid, parse, respond
from .settings import ServeSettings

log = logging.getLogger("rerank_serve")
DISCONNECTED = 499  # the status recorded for a request whose client left (nginx's convention)


class Engine(Protocol):
    """What the routes score with. info: the model's /info (model_name, max_length, ...)."""

    info: dict[str, Any]

    async def rank(self, request: RankRequest) -> tuple[np.ndarray, int]:
        """(raw float64 scores per document, NaN where non-finite; tokens the model saw)."""
        ...

    async def close(self) -> None: ...


class _Routes:
    """The app's handlers and what they share: the settings, the engine once loaded, the metrics."""

    def __init__(self, settings: ServeSettings, start: Callable[[Metrics], Awaitable[Engine]]) -> None:
        self.responses = require("starlette.responses")
        self.settings, self.start, self.metrics = settings, start, Metrics()
        self.engine: Engine | None = None
        self.error: str | None = None

    async def load(self) -> None:
        try:
            self.engine = await self.start(self.metrics)
        except Exception as exc:  # /health and /ready report it; the process stays up for the orchestrator to see
            log.exception("the model failed to load")
            self.error = f"the model failed to load: {type(exc).__name__}: {exc}"
            return
        log.info("ready: %s (%s)", self.engine.info["model_name"], self.engine.info["model_class"])

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(self.load())
        yield
        await loading  # a shutdown during loading waits for it: a loader thread cannot be interrupted
        if self.engine is not None:
            await self.engine.close()

    def reply(self, exc: ServeError) -> Any:
        return self.responses.JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    def not_ready(self) -> ServeError:
        return ServeError(503, "unhealthy", self.error or "loading: the model is not loaded and warmed up yet; retry "
                          "shortly", {"Retry-After": "1"})

    async def health(self, request: Any) -> Any:
        if self.error:
            return self.reply(ServeError(503, "unhealthy", self.error))
        return self.responses.JSONResponse({"status": "ok"})

    async def ready(self, request: Any) -> Any:
        if self.engine is None:
            return self.reply(self.not_ready())
        return self.responses.JSONResponse({"status": "ready"})

    async def info(self, request: Any) -> Any:
        if self.engine is None:
            return self.reply(self.not_ready())
        limits = {k: v for k, v in self.settings.to_dict().items() if k not in ("api_key", "export_dir")}
        return self.responses.JSONResponse({**self.engine.info, "limits": limits,
                                            "auth": self.settings.api_key is not None})

    async def prometheus(self, request: Any) -> Any:
        body, content_type = self.metrics.render()
        return self.responses.Response(body, media_type=content_type)

    async def rank(self, request: Any) -> Any:
        """A rerank route, with its request counted, timed and answered as JSON whatever happens."""
        route, started, status = request.url.path, time.monotonic(), 500
        self.metrics.inflight.inc()
        try:
            response = await self._rank(request, route)
            status = response.status_code
            return response
        except ServeError as exc:
            status = exc.status
            return self.reply(exc)
        except asyncio.CancelledError:
            status = DISCONNECTED
            raise
        except Exception as exc:  # a bug: still a JSON error, and logged with its traceback
            log.exception("unexpected error on %s", route)
            return self.reply(ServeError(500, "backend", f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.monotonic() - started)

    async def _rank(self, request: Any, route: str) -> Any:
        settings, engine = self.settings, self.engine
        _authorize(request, settings.api_key)
        if engine is None:
            raise self.not_ready()
        parsed = parse(route, await _read_json(request, settings.max_body_bytes))
        check_limits(parsed, settings.max_client_batch, settings.max_input_chars)
        scores, tokens = await _unless_disconnected(request, engine.rank(parsed))
        bad = np.flatnonzero(~np.isfinite(scores))
        if len(bad):
            field = "texts" if route == TEI else "documents"
            raise ServeError(500, "backend", f"the model scored `{field}[{int(bad[0])}]` as a non-finite value (NaN "
                             "or inf); this request gets no scores rather than a wrong one. An fp16 export that "
                             "overflows is the usual cause: serve an fp32 or bf16 export")
        return self.responses.JSONResponse(respond(parsed, scores, engine.info["model_name"], tokens))


def create_app(settings: ServeSettings, start: Callable[[Metrics], Awaitable[Engine]]) -> Any:
    """A Starlette app; `start(metrics)` loads the model (in the background, from the app's startup) and gives the
    engine: the embedded Scheduler, or a handle to Ray Serve's model replicas."""
    routing = require("starlette.routing")
    handlers = _Routes(settings, start)
    routes = [routing.Route(path, handlers.rank, methods=["POST"]) for path in ROUTES] + [
        routing.Route("/health", handlers.health, methods=["GET"]),
        routing.Route("/ready", handlers.ready, methods=["GET"]),
        routing.Route("/info", handlers.info, methods=["GET"]),
        routing.Route("/metrics", handlers.prometheus, methods=["GET"]),
    ]
    app = require("starlette.applications").Starlette(routes=routes, lifespan=handlers.lifespan)
    app.state.metrics = handlers.metrics
    return app


def _authorize(request: Any, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ServeError(401, "unauthorized", "missing or wrong API key: send the header `Authorization: Bearer "
                         "<key>` with the key the server was started with (--api-key)",
                         {"WWW-Authenticate": "Bearer"})


async def _read_json(request: Any, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"the request body is not valid JSON ({exc}); send a JSON object") from exc


def _too_large(size: int, limit: int) -> ServeError:
    return ServeError(413, "validation", f"the request body is {size} bytes or more, over the limit of {limit} bytes "
                      "that --max-client-batch x --max-input-chars allow; split the request")


async def _unless_disconnected(request: Any, scoring: Awaitable[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Await the scores, or cancel them (dropping pending pairs) as soon as the client disconnects."""
    task = asyncio.ensure_future(scoring)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise ServeError(DISCONNECTED, "disconnected", "the client disconnected; its pending pairs were dropped")
        return task.result()
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()


async def _disconnect(request: Any) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
