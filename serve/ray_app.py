"""The same app on Ray Serve: an HTTP ingress deployment in front of a model deployment whose replicas each hold
the model, batching with @serve.batch.

Ray does the replicas, placement (ray_actor_options: CPUs / GPUs per replica), routing, health checks, replacement of
dead replicas and autoscaling; nothing here re-implements them. Inside a model replica, @serve.batch gathers requests
for up to --max-batch-wait-ms, sized by their token count (batch_size_fn) against --max-batch-tokens; the batch is
scored with the runtime on worker threads, grouped by the options that change scores. The ingress parses and answers
HTTP with the embedded server's app, and turns a model replica that died under a request into a retriable 503 (Serve's
own proxy would answer 500).

    rerank-serve EXPORT_DIR --ray --replicas 2              # a local Ray
    rerank-serve EXPORT_DIR --ray --ray-address auto         # an existing cluster
    serve deploy serve/ray-config.yaml                      # a multi-node cluster from a Serve config file
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerank_runtime._deps import require

from .app import create_app
from .model import GroupKey, Job, Model, load
from .schemas import RankRequest, ServeError
from .settings import ServeSettings

APP_NAME = "rerank"
INGRESS, MODEL = "RerankIngress", "RerankModel"
MAX_ONGOING_REQUESTS = 256  # per replica; Serve's default (5) would starve the batcher
Item = tuple[Job, int]  # a request's job and its cost against the token budget


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 1
    address: str | None = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0


def batch_tokens(items: list[Item]) -> int:
    """@serve.batch's batch_size_fn: the requests' tokens. Each cost is capped at the budget (see RerankModel.rank),
    so that a request larger than the budget still forms a batch of its own (Serve refuses an item above the max)."""
    return sum(cost for _, cost in items)


def _deployments() -> tuple[Any, Any]:
    """(ingress, model) deployment classes, defined on first use so that importing this module needs no Ray."""
    serve = require("ray.serve")
    return _ingress(serve), _model(serve)


def _model(serve: Any) -> Any:
    @serve.deployment(name=MODEL, max_ongoing_requests=MAX_ONGOING_REQUESTS)
    class RerankModel:
        def __init__(self, settings: dict[str, Any]) -> None:
            self.settings = ServeSettings.from_dict(settings)
            self.model: Model = load(self.settings)  # before the replica takes traffic
            self.model.warm_up()
            self.pool = ThreadPoolExecutor(self.model.concurrency, thread_name_prefix="rerank-serve")
            self.pending_pairs = 0
            self.score_batch.set_max_batch_size(self.settings.max_batch_tokens)
            self.score_batch.set_batch_wait_timeout_s(self.settings.max_batch_wait_ms / 1000.0)

        def info(self) -> dict[str, Any]:
            return self.model.info

        def check_health(self) -> None:
            """Serve's health check: a replica whose model cannot score is replaced."""
            self.model.score((self.model.max_length, None), [("health", "check")])

        async def rank(self, request: RankRequest) -> tuple[Any, ...]:
            """("ok", scores, tokens) or ("error", status, error_type, message, headers): errors travel as values."""
            try:  # tokenising off the scoring pool, so that requests queue up for the batcher while a batch runs
                job = await asyncio.to_thread(self.model.prepare, request)
                n, limit = len(job.pairs), self.settings.max_queue
                if self.pending_pairs + n > limit:
                    raise ServeError(429, "overloaded", f"this replica holds {self.pending_pairs} pairs; this "
                                     f"request's {n} would pass the limit of {limit} (--max-queue); retry later",
                                     {"Retry-After": "1"})
            except ServeError as exc:
                return ("error", exc.status, exc.error_type, exc.message, exc.headers)
            self.pending_pairs += n
            try:
                scores = await self.score_batch((job, min(job.total_tokens, self.settings.max_batch_tokens)))
            finally:
                self.pending_pairs -= n
            return ("ok", scores, job.total_tokens)

        # one batch at a time per replica (one device each); the real budget and wait are set per replica in __init__
        @serve.batch(max_batch_size=16384, batch_wait_timeout_s=0.002, batch_size_fn=batch_tokens)
        async def score_batch(self, items: list[Item]) -> list[np.ndarray]:
            jobs = [job for job, _ in items]
            groups: dict[GroupKey, list[int]] = defaultdict(list)
            for i, job in enumerate(jobs):
                groups[job.key].append(i)
            loop = asyncio.get_running_loop()
            calls = [loop.run_in_executor(self.pool, self.model.score, key, [p for i in members for p in jobs[i].pairs])
                     for key, members in groups.items()]
            results: list[np.ndarray] = [np.empty(0)] * len(jobs)
            for members, scores in zip(groups.values(), await asyncio.gather(*calls)):
                offset = 0
                for i in members:
                    results[i] = scores[offset : offset + len(jobs[i].pairs)]
                    offset += len(jobs[i].pairs)
            return results

    return RerankModel


def _ingress(serve: Any) -> Any:
    @serve.deployment(name=INGRESS, max_ongoing_requests=4 * MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class RerankIngress:
        def __init__(self, settings: dict[str, Any], model: Any) -> None:
            self.settings = ServeSettings.from_dict(settings)
            self.model = model

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(self.settings, lambda metrics: _HandleEngine.start(self.model))

    return RerankIngress


class _HandleEngine:
    """The ingress's Engine: requests go to the model replicas through Serve's deployment handle."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self.handle = handle
        self.info = info

    @classmethod
    async def start(cls, handle: Any) -> _HandleEngine:
        return cls(handle, await handle.info.remote())

    async def rank(self, request: RankRequest) -> tuple[np.ndarray, int]:
        exceptions = require("ray.exceptions")
        try:
            result = await self.handle.rank.remote(request)
        except (exceptions.RayActorError, exceptions.ActorUnavailableError) as exc:
            raise ServeError(503, "unhealthy", f"the model replica serving this request went away "
                             f"({type(exc).__name__}); Ray Serve replaces it: retry", {"Retry-After": "1"}) from exc
        if result[0] == "error":
            raise ServeError(*result[1:])
        return result[1], result[2]

    async def close(self) -> None:
        return None


def build(settings: ServeSettings, options: RayOptions | None = None) -> Any:
    """The Serve application: the ingress bound to the model deployment (pass it to serve.run)."""
    options = options or RayOptions()
    ingress, model = _deployments()
    replicas = model.options(num_replicas=options.replicas, ray_actor_options={
        "num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica})
    return ingress.bind(settings.to_dict(), replicas.bind(settings.to_dict()))


def app_builder(args: dict[str, Any]) -> Any:
    """For Serve config files: `import_path: rerank_serve.ray_app:app_builder`, `args:` the ServeSettings fields.
    Replicas, autoscaling and GPUs come from the file's `deployments:` section (RerankModel, RerankIngress)."""
    settings = ServeSettings.from_dict(dict(args))
    ingress, model = _deployments()
    return ingress.bind(settings.to_dict(), model.bind(settings.to_dict()))


def run_ray(settings: ServeSettings, host: str, port: int, options: RayOptions) -> int:
    """Start (or join) Ray, deploy, serve until SIGTERM / Ctrl-C, then take the application down."""
    ray, serve = require("ray"), require("ray.serve")
    ray.init(address=options.address, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(settings, options), name=APP_NAME, route_prefix="/", blocking=False)
    gcs = ray.get_runtime_context().gcs_address
    print(f"rerank-serve: {options.replicas} replica(s) of {settings.export_dir} on http://{host}:{port} (Ray Serve, "
          f"cluster {gcs})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    stop.wait()
    serve.delete(APP_NAME)  # Serve lets the replicas finish their in-flight requests before removing them
    if options.address is None:
        serve.shutdown()
        ray.shutdown()
    return 0
