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


def captured_batch(reranker: Any, pairs: list[list[str]], call: dict[str, Any]) -> tuple[Any, dict[str, np.ndarray]]:
    """(the call's GraphRequest, the feeds of the first batch the runtime builds for `pairs`)."""
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
    return capture.calls[0]


def op_profile(reranker: Any, pairs: list[list[str]], call: dict[str, Any], threads: int,
               runs: int = 3) -> dict[str, Any]:
    """Per op type: milliseconds per run and share of the kernel time, for one batch of `pairs`."""
    import onnxruntime as ort

    from rerank_runtime.front import backends_of
    from rerank_runtime.onnx_backend import default_options

    request, feeds = captured_batch(reranker, pairs, call)
    backend = backends_of(reranker.front.backend)[0]
    model = Path(backend.export_dir) / backend.manifest.graph.file
    inputs = reranker.front.graph.complete(request, feeds)
    with tempfile.TemporaryDirectory() as tmp:
        options = default_options(ort, backend.placement)
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        names = list(request.output_names)
        session.run(names, inputs)  # warm-up, also profiled: dropped below by keeping the last `runs`
        for _ in range(runs):
            session.run(names, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(kernels) // (runs + 1)
    times: Counter[str] = Counter()
    for event in kernels[-per_run * runs:] if per_run else []:
        times[event["args"]["op_name"]] += event["dur"]
    total = sum(times.values()) or 1
    return {
        "batch": list(inputs["input_ids"].shape), "runs": runs,
        "ms_per_run": total / runs / 1e3,
        "ops": {op: {"ms": d / runs / 1e3, "share": d / total} for op, d in times.most_common()},
        "matmul_share": sum(d for op, d in times.items() if "MatMul" in op or "Gemm" in op) / total,
    }
