"""Where ONNX Runtime spends its time: an op-type profile of one real batch of the throughput workload.

The batch is the one the runtime itself builds (its host code, captured at the backend), run in a profiling session
with the runtime's own default session options; the result says how much of the time the matmuls take, and so how
close the whole model can get to the GEMM probe's rate.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def captured_batches(reranker: Any, pairs: list[list[str]], call: dict[str, Any]
                     ) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """(the call's GraphRequest, the feeds of every batch the runtime builds for `pairs`, the longest first)."""
    from rerank_runtime.front import FeedRecorder

    scorer = reranker._scorer
    capture = FeedRecorder(scorer.front)
    scorer.front = capture
    try:
        reranker.compute_score_array(pairs, **call)
    finally:
        scorer.front = capture.front
    if not capture.calls:
        raise RuntimeError("the runtime ran no batch for the profile pairs")
    return capture.calls[0][0], [feeds for _, feeds in capture.calls]


def session_inputs(reranker: Any, request: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exactly what the reranker's graph session is fed for a batch the host built (the call's compression plan)."""
    return dict(reranker.front.graph.complete(request, feeds))


def op_profile(reranker: Any, pairs: list[list[str]], call: dict[str, Any], threads: int,
               runs: int = 3) -> dict[str, Any]:
    """Per op type: milliseconds per run and share of the kernel time, for one batch of `pairs`."""
    return op_profiles([reranker], pairs, call, threads, runs)[0]


def op_profiles(rerankers: list[Any], pairs: list[list[str]], call: dict[str, Any], threads: int, runs: int = 3,
                configs: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """op_profile of several rerankers on the same batch (built by the first one's host code), their runs
    alternated so that other load hits each alike. configs: extra session config entries ("key=value") per reranker.
    """
    import onnxruntime as ort

    from rerank_runtime.front import backends_of
    from rerank_runtime.onnx_backend import default_options

    request, batches = captured_batches(rerankers[0], pairs, call)
    names = list(request.output_names)
    with tempfile.TemporaryDirectory() as tmp:
        sessions, inputs = [], []
        for i, reranker in enumerate(rerankers):
            backend = backends_of(reranker.front.backend)[0]
            options = default_options(ort, backend.placement)
            options.intra_op_num_threads = threads
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / f"ort{i}")
            for entry in (configs or [[]] * len(rerankers))[i]:
                options.add_session_config_entry(*entry.split("=", 1))
            model = Path(backend.export_dir) / backend.manifest.graph.file
            sessions.append(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]))
            inputs.append(session_inputs(reranker, request, batches[0]))
        for _ in range(runs + 1):  # the first run is a warm-up, also profiled: dropped by keeping the last `runs`
            for session, feeds in zip(sessions, inputs):
                session.run(names, feeds)
        events = [json.loads(Path(session.end_profiling()).read_text()) for session in sessions]
    return [_summary(e, runs, list(feeds["input_ids"].shape)) for e, feeds in zip(events, inputs)]


def _summary(events: list[dict[str, Any]], runs: int, batch: list[int]) -> dict[str, Any]:
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(kernels) // (runs + 1)
    times: Counter[str] = Counter()
    for event in kernels[-per_run * runs:] if per_run else []:
        times[event["args"]["op_name"]] += event["dur"]
    total = sum(times.values()) or 1
    return {
        "batch": batch, "runs": runs,
        "ms_per_run": total / runs / 1e3,
        "ops": {op: {"ms": d / runs / 1e3, "share": d / total} for op, d in times.most_common()},
        "matmul_share": sum(d for op, d in times.items() if "MatMul" in op or "Gemm" in op) / total,
    }
