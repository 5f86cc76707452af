"""The three request/response shapes: text-embeddings-inference's /rerank, Jina / Cohere v1, Cohere v2.

Each route's JSON body becomes one RankRequest; a RankRequest and its scores become that route's response. Fields
are checked strictly: a wrong type or value, or a field this server does not know, is a 422 naming the field (an
unknown field might change results on the server the client was written for, so it is never ignored silently).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rerank_runtime.scoring import sigmoid

TEI, V1, V2 = "/rerank", "/v1/rerank", "/v2/rerank"
ROUTES = (TEI, V1, V2)


class ServeError(Exception):
    """An HTTP error with the JSON body {"error": message, "error_type": error_type}."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


def invalid(message: str) -> ServeError:
    return ServeError(422, "validation", message)


@dataclass(frozen=True)
class RankRequest:
    """One request, whatever its route. max_length: the caller's cap (Cohere v2 max_tokens_per_doc) or None."""

    route: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    truncate: bool = True
    max_length: int | None = None
    cutoff_layer: int | None = None


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"field `{name}` must be true or false, got {json_type(value)}: {value!r:.60}")
    return value


def _int_at_least(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise invalid(f"field `{name}` must be an integer >= {minimum}, got {json_type(value)}: {value!r:.60}")
        return value

    return check


_positive_int = _int_at_least(1)
_priority = _int_at_least(0)  # Cohere v2's scheduling priority: checked, then not used (requests are served in order)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(f"field `{name}` must be a string, got {json_type(value)}")
    return value


def _right_only(name: str, value: Any) -> str:
    if value not in ("right", "Right"):
        raise invalid(f"field `{name}`: only \"right\" truncation is served (as FlagEmbedding cuts), got {value!r:.60}")
    return value


def _must_be_null(name: str, value: Any) -> None:
    raise invalid(f"field `{name}` is not supported by this server (got {value!r:.60}); leave it out")


def _documents(name: str, value: Any) -> tuple[str, ...]:
    """A list of strings, or (Jina / Cohere v1) of {"text": string} objects."""
    if not isinstance(value, list):
        raise invalid(f"field `{name}` must be a list of strings, got {json_type(value)}")
    docs = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and set(item) == {"text"}:
            item = item["text"]
        if not isinstance(item, str):
            raise invalid(f"field `{name}[{i}]` must be a string or {{\"text\": string}}, got {json_type(item)}")
        docs.append(item)
    return tuple(docs)


Checker = Callable[[str, Any], Any]
_COMMON: dict[str, Checker] = {"query": _text, "top_n": _positive_int, "cutoff_layer": _positive_int}
FIELDS: dict[str, dict[str, Checker]] = {
    TEI: {**_COMMON, "texts": _documents, "documents": _documents, "truncate": _bool, "raw_scores": _bool,
          "return_text": _bool, "truncation_direction": _right_only},
    V1: {**_COMMON, "model": _text, "documents": _documents, "return_documents": _bool,
         "max_chunks_per_doc": _must_be_null, "rank_fields": _must_be_null},
    V2: {**_COMMON, "model": _text, "documents": _documents, "max_tokens_per_doc": _positive_int,
         "priority": _priority, "relevant_spans": _must_be_null},
}


def parse(route: str, body: Any) -> RankRequest:
    """Check a decoded JSON body against the route's fields."""
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {json_type(body)}")
    known = FIELDS[route]
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise invalid(f"unknown field `{unknown[0]}` for {route}; accepted fields: {sorted(known)}")
    values = {name: known[name](name, value) for name, value in body.items() if value is not None}
    if "query" not in values:
        raise invalid("field `query` is required (a string)")
    docs_field = "texts" if route == TEI and "documents" not in values else "documents"
    if route == TEI and "texts" in values and "documents" in values:
        raise invalid("fields `texts` and `documents` are the same list; send one of them")
    if docs_field not in values:
        raise invalid(f"field `{docs_field}` is required (a list of strings)")
    return RankRequest(
        route=route,
        query=values["query"],
        documents=values[docs_field],
        top_n=values.get("top_n"),
        return_documents=values.get("return_text" if route == TEI else "return_documents", route == V1),
        raw_scores=values.get("raw_scores", False),
        truncate=values.get("truncate", True),
        max_length=values.get("max_tokens_per_doc"),
        cutoff_layer=values.get("cutoff_layer"),
    )


def check_limits(request: RankRequest, max_client_batch: int, max_input_chars: int) -> None:
    """413 for a request over the server's limits, naming the limit."""
    field = "texts" if request.route == TEI else "documents"
    if not request.documents:
        raise invalid(f"field `{field}` must hold at least one document")
    if len(request.documents) > max_client_batch:
        raise ServeError(413, "validation", f"{len(request.documents)} documents in `{field}` exceed the limit of "
                         f"{max_client_batch} per request (--max-client-batch); split the request")
    for name, text in (("query", request.query), *((f"{field}[{i}]", d) for i, d in enumerate(request.documents))):
        if len(text) > max_input_chars:
            raise ServeError(413, "validation", f"`{name}` has {len(text)} characters, over the limit of "
                             f"{max_input_chars} per text (--max-input-chars); shorten it")


def respond(request: RankRequest, scores: np.ndarray, model_name: str, tokens: int) -> Any:
    """The route's JSON response. scores: float64 [n_documents], raw logits; sigmoid is applied here, in float64."""
    # the runtime's own normalize, so served scores equal compute_score(normalize=True)
    relevance = scores if request.route == TEI and request.raw_scores else sigmoid(scores)
    order = np.argsort(-relevance, kind="stable")[: request.top_n]  # best first; ties keep input order
    docs = request.documents
    if request.route == TEI:
        return [{"index": int(i), "score": float(relevance[i]),
                 **({"text": docs[i]} if request.return_documents else {})} for i in order]
    results = [{"index": int(i), "relevance_score": float(relevance[i]),
                **({"document": {"text": docs[i]}} if request.return_documents else {})} for i in order]
    if request.route == V1:
        return {"id": str(uuid.uuid4()), "model": model_name, "results": results,
                "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
                "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}}
    return {"id": str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                     "tokens": {"input_tokens": tokens, "output_tokens": 0}}}


def json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
