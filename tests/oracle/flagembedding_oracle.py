"""FlagEmbedding 1.4.2 as an oracle: score jobs read from stdin, write one JSON list of responses to stdout.

Run it with the oracle interpreter (transformers 4.47.1, see requirements.txt beside this file):

    $RERANK_ORACLE_PYTHON tests/oracle/flagembedding_oracle.py < jobs.json > responses.json

A job is {"checkpoint": dir, "model_class": one of MODEL_CLASSES, "init": constructor kwargs,
"call": compute_score kwargs, "pairs": [[q, p], ...] (or one [q, p]), "capture_ids": bool}.
A response is {"scores", "ids", "query_lengths", "prompt_lengths", "error"}:
  scores: exactly what compute_score(pairs, **call) returned, as JSON (floats, lists, nested lists);
  ids: with capture_ids, ids[i] is the unpadded input_ids FlagEmbedding fed its model for pairs[i]; else [];
  query_lengths / prompt_lengths: with capture_ids and the lightweight kind, the values FlagEmbedding passed to
    the model's forward for pairs[i]; else [];
  error: null, or {"type": exception class name, "message": str} when the job raised (the other fields are then
    null / empty); the next job still runs.
Rerankers are always built with devices="cpu" and use_fp16=False (fp32 on CPU) and cached per
(checkpoint, model_class, init) for the life of the process. Stdout carries only the JSON: everything else that
FlagEmbedding, transformers or tqdm print goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable

CLASS_NAMES = {
    "encoder-only-base": "FlagReranker",
    "decoder-only-base": "FlagLLMReranker",
    "decoder-only-layerwise": "LayerWiseFlagLLMReranker",
    "decoder-only-lightweight": "LightWeightFlagLLMReranker",
}
FORCED_INIT = {"devices": "cpu", "use_fp16": False}
JOB_KEYS = {"checkpoint", "model_class", "init", "call", "pairs", "capture_ids"}

_rerankers: dict[str, Any] = {}


def get_reranker(job: dict[str, Any]) -> Any:
    """The FlagEmbedding reranker for this job, built once per (checkpoint, model_class, init)."""
    model_class, checkpoint, init = job["model_class"], job["checkpoint"], job.get("init") or {}
    if model_class not in CLASS_NAMES:
        raise ValueError(f"model_class {model_class!r} is not one of {sorted(CLASS_NAMES)}")
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist; build it before asking the oracle")
    forced = sorted(set(init) & set(FORCED_INIT))
    if forced:
        raise ValueError(f"init sets {forced}, which the oracle fixes to {FORCED_INIT}; remove them from the job")
    key = json.dumps([os.path.abspath(checkpoint), model_class, init], sort_keys=True)
    if key not in _rerankers:
        import FlagEmbedding

        cls = getattr(FlagEmbedding, CLASS_NAMES[model_class])
        _rerankers[key] = cls(checkpoint, **FORCED_INIT, **init)
    return _rerankers[key]


def to_jsonable(value: Any) -> Any:
    """compute_score's return (float, list, nested list, numpy array or scalar) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (int, float)) or value is None:
        return value
    raise TypeError(f"compute_score returned a {type(value).__name__}, which the oracle cannot serialise")


class ForwardRecorder:
    """Wraps reranker.model.forward and records the inputs of every forward that returned."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[dict[str, Any]] = []
        self._original: Callable[..., Any] = model.forward

    def __enter__(self) -> ForwardRecorder:
        def recording_forward(*args: Any, **kwargs: Any) -> Any:
            out = self._original(*args, **kwargs)  # record only forwards that succeeded (a failed probe is retried)
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.calls.append({
                "input_ids": ids.tolist(),
                "attention_mask": kwargs["attention_mask"].tolist(),
                "query_lengths": kwargs.get("query_lengths"),
                "prompt_lengths": kwargs.get("prompt_lengths"),
            })
            return out

        self.model.forward = recording_forward  # instance attribute: nn.Module.__call__ finds it before the class's
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.forward


def capture_one(reranker: Any, pair: list[str], call: dict[str, Any]) -> dict[str, Any]:
    """Score one pair alone and return the ids (padding stripped) and lengths its real forward was given."""
    with ForwardRecorder(reranker.model) as recorder:
        reranker.compute_score([pair], **call)
    if len(recorder.calls) != 2:  # FlagEmbedding runs a probe forward, then the one batch of a one-pair call
        raise RuntimeError(f"expected 2 forwards (probe + batch) for one pair, recorded {len(recorder.calls)}")
    fed = recorder.calls[1]
    if len(fed["input_ids"]) != 1:
        raise RuntimeError(f"expected a batch of 1 for one pair, the forward got {len(fed['input_ids'])} rows")
    ids = [t for t, m in zip(fed["input_ids"][0], fed["attention_mask"][0]) if m]
    ql, pl = fed["query_lengths"], fed["prompt_lengths"]
    return {"ids": ids, "query_length": None if ql is None else int(ql[0]),
            "prompt_length": None if pl is None else int(pl[0])}


def as_pair_list(pairs: Any) -> list[list[str]]:
    """The pairs one by one, accepting FlagEmbedding's single-pair form [q, p]."""
    if pairs and isinstance(pairs[0], str):
        return [list(pairs)]
    return [list(p) for p in pairs]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(job) - JOB_KEYS)
    if unknown:
        raise ValueError(f"unknown job keys {unknown}; known: {sorted(JOB_KEYS)}")
    reranker = get_reranker(job)
    call = job.get("call") or {}
    scores = to_jsonable(reranker.compute_score(job["pairs"], **call))
    response: dict[str, Any] = {"scores": scores, "ids": [], "query_lengths": [], "prompt_lengths": [], "error": None}
    if job.get("capture_ids"):
        captured = [capture_one(reranker, pair, call) for pair in as_pair_list(job["pairs"])]
        response["ids"] = [c["ids"] for c in captured]
        if job["model_class"] == "decoder-only-lightweight":
            response["query_lengths"] = [c["query_length"] for c in captured]
            response["prompt_lengths"] = [c["prompt_length"] for c in captured]
    return response


def run_jobs(jobs: list[Any]) -> list[dict[str, Any]]:
    responses = []
    for n, job in enumerate(jobs):
        try:
            if not isinstance(job, dict):
                raise TypeError(f"job {n} is a {type(job).__name__}, expected a JSON object")
            responses.append(run_job(job))
        except Exception as exc:  # an oracle records FlagEmbedding's failures; they are results too
            traceback.print_exc(file=sys.stderr)
            responses.append({"scores": None, "ids": [], "query_lengths": [], "prompt_lengths": [],
                              "error": {"type": type(exc).__name__, "message": str(exc)}})
    return responses


def main() -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the Hub: a missing checkpoint must fail, not download
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # from here on, anything printed (Python or C level) lands on stderr
    sys.stdout = sys.stderr
    try:
        jobs = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        print(f"oracle: the request on stdin is not JSON ({exc}); send a JSON list of jobs", file=sys.stderr)
        return 2
    if not isinstance(jobs, list):
        print(f"oracle: the request is a JSON {type(jobs).__name__}, expected a list of jobs", file=sys.stderr)
        return 2
    import FlagEmbedding  # noqa: F401  (fail the whole run, not each job, when the oracle env is broken)

    json.dump(run_jobs(jobs), json_out)
    json_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
