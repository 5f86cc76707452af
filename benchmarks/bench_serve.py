"""rerank-serve under bounded loopback load: throughput, latency, cross-request batching on/off, a peer server.

    make bench-serve                                           # mid encoder, 1/8/32/128 clients x 1/20/100 documents
    .venv/bin/python benchmarks/bench_serve.py --clients 32 --docs 1,20 --requests-per-client 1   # a fast look
    .venv/bin/python benchmarks/bench_serve.py --report benchmarks/results/serve.jsonl              # re-render

For every scenario (clients x documents per request, a fixed number of requests per client) the same pairs are first
scored offline with one compute_score call (timed: the denominator of "vs offline"), then sent to each server; every
response is checked against those scores (fp32 tolerance). Servers: rerank-serve (cross-request batching on),
rerank-serve --no-cross-request-batching (1-document requests at the target's client count), and Infinity serving the
same generated checkpoint where its environment exists (.cache/bench/venv-infinity, see benchmarks/README.md).
Results: JSON lines, a markdown table and a chart under benchmarks/results/ (serve.*).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from bench_serve_load import INFINITY_API, TEI_RAW, ServerProcess, infinity, make_requests, rerank_serve, run_load  # noqa: E402,I001

TARGET_CLIENTS, PEERS = 32, ("infinity",)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise SystemExit(f"bench_serve: {what} must be positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mid-xlm-roberta", help="a built-in checkpoint (rerank-export list)")
    p.add_argument("--clients", default="1,8,32,128", help="concurrent clients per scenario")
    p.add_argument("--docs", default="1,20,100", help="documents per request")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="the server's and compute_score's budget")
    p.add_argument("--max-batch-wait-ms", type=float, default=2.0)
    p.add_argument("--pool", type=int, default=2000, help="pairs whose passages requests draw from (length mix)")
    p.add_argument("--peers", default="infinity", help="peer servers to run where installed, or 'none'")
    p.add_argument("--infinity-python", default=os.environ.get("RERANK_INFINITY_PYTHON"),
                   help="the Infinity environment's python (default .cache/bench/venv-infinity/bin/python)")
    p.add_argument("--out", default=str(BENCH / "results" / "serve"), help="output stem (.jsonl, .md, .png)")
    p.add_argument("--report", default=None, help="re-render the tables and chart of an existing run's .jsonl")
    return p.parse_args(argv)


def target_clients(clients: list[int]) -> int:
    """The client count the targets are judged at: 32, else the closest one below it, else the smallest."""
    below = [c for c in clients if c <= TARGET_CLIENTS]
    return max(below) if below else min(clients)


class Run:
    """One benchmark run: the export, the pairs, the offline scores and timings, and the servers' loads."""

    def __init__(self, args: argparse.Namespace, emit: Any) -> None:
        from bench_setup import ensure_export

        from rerank_export.testing.factory import builtin_checkpoint
        from rerank_export.testing.pairs import benchmark_pairs
        from rerank_runtime import FlagAutoReranker
        from rerank_runtime.tolerances import tolerance

        self.args, self.emit = args, emit
        self.cache = REPO / ".cache" / "bench"
        self.checkpoint = builtin_checkpoint(args.model)
        record = ensure_export(self.checkpoint, "fp32", {}, self.cache)
        emit({"type": "export", "model": args.model, **record})
        if "error" in record:
            raise RuntimeError(f"the export failed: {record['error']}")
        self.export = Path(record["path"])
        self.pool = benchmark_pairs(args.pool, seed=0)
        self.reranker = FlagAutoReranker.from_finetuned(str(self.export), max_batch_tokens=args.max_batch_tokens)
        tol = tolerance("fp32", "cpu")
        self.tolerance = (tol.atol, tol.rtol)
        self.plans = {(c, d): make_requests(self.pool, c, d, args.requests_per_client, seed=1)
                      for d in _ints(args.docs, "--docs") for c in _ints(args.clients, "--clients")}
        self.expected: dict[tuple[str, str], float] = {}

    def offline(self) -> None:
        """Score each scenario's pairs in one compute_score call: the expected scores, and the offline rate."""
        self.reranker.compute_score_array(self.pool[:64])  # warm-up
        for (clients, docs), plan in self.plans.items():
            pairs = [(q, d) for reqs in plan for q, ds in reqs for d in ds]
            start = time.perf_counter()
            scores = self.reranker.compute_score_array(pairs)
            seconds = time.perf_counter() - start
            self.expected.update(zip(pairs, scores.tolist()))
            self.emit({"type": "offline", "clients": clients, "docs": docs, "pairs": len(pairs), "seconds": seconds,
                       "pairs_per_s": len(pairs) / seconds, "load_average": list(os.getloadavg())})

    def want(self, request: tuple[str, list[str]]) -> list[float]:
        return [self.expected[(request[0], d)] for d in request[1]]

    def serve(self, name: str, server: ServerProcess, api: Any, scenarios: list[tuple[int, int]]) -> None:
        start = time.perf_counter()
        try:
            server.start()
        except (RuntimeError, OSError) as exc:
            self.emit({"type": "server-failed", "server": name, "message": str(exc)})
            return
        self.emit({"type": "server", "server": name, "startup_s": time.perf_counter() - start, "argv": server.argv})
        try:
            run_load(server.url, api, make_requests(self.pool, 4, 4, 2, seed=99), self._any, self.tolerance)  # warm-up
            for clients, docs in scenarios:
                result = run_load(server.url, api, self.plans[(clients, docs)], self.want, self.tolerance)
                self.emit({"type": "load", "server": name, "clients": clients, "docs": docs,
                           "requests_per_client": self.args.requests_per_client, **result,
                           "load_average": list(os.getloadavg())})
        finally:
            self.emit({"type": "server-stopped", "server": name, "exit_code": server.stop()})

    def _any(self, request: tuple[str, list[str]]) -> list[float]:
        """Warm-up requests are checked too (their pairs are scored on the spot)."""
        return self.reranker.compute_score_array([(request[0], d) for d in request[1]]).tolist()

    def servers(self, logs: Path) -> None:
        a = self.args
        flags = ["--max-batch-tokens", str(a.max_batch_tokens), "--max-batch-wait-ms", str(a.max_batch_wait_ms),
                 "--max-client-batch", str(max(_ints(a.docs, "--docs")))]
        everything = list(self.plans)
        self.serve("rerank-serve", rerank_serve(self.export, logs / "rerank-serve.log", *flags), TEI_RAW, everything)
        single = [k for k in everything if k == (target_clients([c for c, _ in everything]), min(d for _, d in everything))]
        self.serve("rerank-serve (no cross-request batching)", rerank_serve(
            self.export, logs / "rerank-serve-nobatch.log", *flags, "--no-cross-request-batching"), TEI_RAW, single)
        peers = [] if a.peers == "none" else [p.strip() for p in a.peers.split(",")]
        for peer in peers:
            if peer not in PEERS:
                raise SystemExit(f"bench_serve: unknown peer {peer!r}; known: {', '.join(PEERS)} or none")
            python = Path(a.infinity_python or self.cache / "venv-infinity" / "bin" / "python")
            if not python.is_file():
                self.emit({"type": "server-failed", "server": peer, "message": f"no Infinity environment at {python}: "
                           "create it as benchmarks/README.md says, or pass --infinity-python"})
                continue
            self.serve(peer, infinity(python, self.checkpoint, self.cache, logs / "infinity.log"), INFINITY_API,
                       everything)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench_rerank import Output
    from bench_serve_report import write_report

    if args.report:
        import json

        jsonl = Path(args.report)
        records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        md, png = write_report(records, jsonl.with_name(jsonl.name[: -len(".jsonl")]))
        print(f"wrote {md} and {png}", file=sys.stderr)
        return 0
    from bench_env import environment

    start = time.perf_counter()
    out = Output(Path(args.out), time.strftime("%Y%m%dT%H%M%S"))
    out({"type": "environment", **environment(os.cpu_count() or 1), "settings": vars(args)})
    logs = Path(args.out).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        run = Run(args, out)
        run.offline()
        run.servers(logs)
    except Exception as exc:  # the record says why; the partial run is still reported
        out({"type": "failed", "error": {"type": type(exc).__name__, "message": str(exc),
                                         "traceback": traceback.format_exc()}})
    out({"type": "done", "seconds": time.perf_counter() - start, "load_average": list(os.getloadavg())})
    jsonl = out.finish()
    md, png = write_report(out.records, Path(args.out))
    print(f"wrote {jsonl}, {md} and {png} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0 if not any(r["type"] == "failed" for r in out.records) else 1


if __name__ == "__main__":
    sys.exit(main())
