"""`rerank-serve EXPORT_DIR`: the embedded server (one process), or with --ray the same app on Ray Serve.

argparse only at import time, so --help is instant and works without the serve extra. Exit codes: 0 after a clean
shutdown (SIGTERM or Ctrl-C drains in-flight requests first), 2 for bad options or an export that cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from rerank_runtime._deps import install_hint

GRACEFUL_SHUTDOWN_S = 30  # how long SIGTERM waits for in-flight requests


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rerank-serve", description="Serve an export over HTTP: TEI's /rerank, "
                                "Jina / Cohere /v1/rerank, Cohere /v2/rerank, with cross-request batching.")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="an export directory written by rerank-export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--devices", default=None, help='runtime devices: "cpu", "cuda:0", or "cuda:0,cuda:1"')
    p.add_argument("--provider", default=None, help="cpu, cuda, tensorrt or trt-engine (default: cpu)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="token budget of one batch (default 16384)")
    p.add_argument("--max-batch-wait-ms", type=float, default=2.0,
                   help="how long pairs wait for other requests to join their batch (default 2)")
    p.add_argument("--max-client-batch", type=int, default=1000, help="documents per request (default 1000)")
    p.add_argument("--max-input-chars", type=int, default=20000, help="characters per query or document "
                   "(default 20000)")
    p.add_argument("--max-queue", type=int, default=20000, help="pairs waiting across requests before 429 "
                   "(default 20000)")
    p.add_argument("--model-name", default=None, help="the model name responses report (default: the manifest's)")
    p.add_argument("--api-key", default=os.environ.get("RERANK_SERVE_API_KEY"),
                   help="require `Authorization: Bearer KEY` on the rerank routes (default: $RERANK_SERVE_API_KEY, "
                   "else open)")
    p.add_argument("--no-cross-request-batching", action="store_true",
                   help="score each request on its own (embedded server only; for comparison)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ray = p.add_argument_group(f"Ray Serve: {install_hint('cpu', 'ray')}")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of one embedded process")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (default 1)")
    ray.add_argument("--ray-address", default=None, help="an existing cluster (default: start a local Ray)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per replica (default 1)")
    return p


def settings_from(args: argparse.Namespace) -> Any:
    from .settings import ServeSettings

    return ServeSettings(
        export_dir=args.export_dir, devices=args.devices, provider=args.provider,
        max_batch_tokens=args.max_batch_tokens, max_batch_wait_ms=args.max_batch_wait_ms,
        max_client_batch=args.max_client_batch, max_input_chars=args.max_input_chars, max_queue=args.max_queue,
        model_name=args.model_name, api_key=args.api_key or None,
        cross_request_batching=not args.no_cross_request_batching,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rerank_runtime.artifact import detect_model_class
    from rerank_runtime.errors import RerankError

    try:
        settings = settings_from(args)
        detect_model_class(settings.export_dir)  # reads the manifest: fail before listening: a wrong path is exit 2, not a 503 later
    except (ValueError, RerankError) as exc:
        print(f"rerank-serve: {exc}", file=sys.stderr)
        return 2
    if args.ray:
        from .ray_app import RayOptions, run_ray

        options = RayOptions(args.replicas, args.ray_address, args.gpus_per_replica, args.cpus_per_replica)
        return run_ray(settings, args.host, args.port, options)
    return serve_embedded(settings, args.host, args.port, args.log_level)


def serve_embedded(settings: Any, host: str, port: int, log_level: str = "info") -> int:
    from rerank_runtime._deps import require

    from .app import create_app
    from .model import load
    from .scheduler import LocalEngine

    uvicorn = require("uvicorn")
    app = create_app(settings, lambda metrics: LocalEngine.start(lambda: load(settings), settings, metrics))
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler it found; a no-op one makes the exit 0
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
