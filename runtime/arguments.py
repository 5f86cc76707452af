"""The reranker classes' arguments: FlagEmbedding's constructor settings and compute_score options, checked, with a
hint for every refusal that says what to pass instead.

FlagEmbedding takes unknown keywords silently (its AbsReranker stores them as attributes); these classes refuse them,
except two names FlagEmbedding's own reranker workflow passes: `passage_max_length` (FlagEmbedding 1.4.2 stores it on
the reranker and never reads it, passages are limited by max_length: accepted, stored, and a warning, once per value,
when it differs from the default 512) and `reranker_batch_size` (its evaluation arguments' name for batch_size).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

from .kinds import Kind
from .progress import check_setting as check_progress
from .scoring import check_non_finite

PASSAGE_MAX_LENGTH_DEFAULT = 512
DEFAULT_BATCH_SIZE = 128  # FlagEmbedding's, the constructors' default
_warned: set[object] = set()  # passage_max_length values already warned about in this process

_HINTS = {
    "device": "pass devices= (FlagEmbedding also ignores device=)",
    "compress_layer": "only LightWeightFlagLLMReranker takes it (deprecated spelling of compress_layers)",
}


def check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def check_settings(cls: type, public: Sequence[type], settings: dict[str, Any], unknown: dict[str, Any]) -> None:
    """Check a constructor's settings in place: the workflow names become settings, peft_path is refused (and
    dropped), every other unknown keyword is a TypeError naming what `cls` accepts."""
    extras = {name: unknown.pop(name) for name in ("passage_max_length", "reranker_batch_size") if name in unknown}
    if unknown:
        accepted = sorted(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs"))
        hints = [f"{name}: {hint(public, name)}" for name in sorted(unknown) if hint(public, name)]
        raise TypeError(f"{cls.__name__} got unexpected keyword argument(s) {sorted(unknown)}"
                        + (f" ({'; '.join(hints)})" if hints else "") + f"; accepted: {accepted}")
    settings.update(_workflow_arguments(settings, **extras))
    if settings.pop("peft_path", None) is not None:
        raise ValueError("peft_path is not supported: merge the LoRA into the base model (PeftModel.merge_and_unload) "
                         "and export the merged model")
    for name, minimum, optional in (("batch_size", 1, False), ("max_length", 1, True), ("query_max_length", 1, True),
                                    ("max_batch_tokens", 1, True), ("chunk_size", 1, False)):
        check_int(name, settings[name], minimum, optional)
    check_non_finite(settings["non_finite"])
    check_progress(settings["show_progress_bar"])
    if not isinstance(settings["verify_hashes"], bool):
        raise TypeError(f"verify_hashes must be a bool, got {type(settings['verify_hashes']).__name__}")


def check_call(cls: type, public: Sequence[type], kind: Kind, call: dict[str, Any]) -> None:
    """TypeError for a compute_score option the class does not take (prompt for the encoder, ...)."""
    unsupported = [n for n in ("prompt",) if call.get(n) is not None and kind.default_prompt is None]
    unsupported += [n for n in ("cutoff_layers",) if call.get(n) is not None and not kind.takes_cutoff]
    unsupported += [n for n in ("compress_ratio", "compress_layers", "compress_layer")
                    if call.get(n) is not None and not kind.takes_compression]
    if unsupported:
        raise TypeError(f"{cls.__name__}.compute_score does not take {unsupported}: {hint(public, unsupported[0])}")


def hint(public: Sequence[type], name: str) -> str:
    """What to do instead of passing `name`: the classes that take it, or a known alternative."""
    if name in _HINTS:
        return _HINTS[name]
    owners = [c.__name__ for c in public if name in inspect.signature(c.__init__).parameters]  # type: ignore[misc]
    return f"only {', '.join(owners)} take(s) it" if owners else ""


def _workflow_arguments(settings: dict[str, Any], passage_max_length: Any = PASSAGE_MAX_LENGTH_DEFAULT,
                        reranker_batch_size: Any = None) -> dict[str, Any]:
    """The settings FlagEmbedding's reranker workflow passes under its own names, as this runtime's settings."""
    check_int("passage_max_length", passage_max_length, 1)
    out: dict[str, Any] = {"passage_max_length": passage_max_length}
    if passage_max_length != PASSAGE_MAX_LENGTH_DEFAULT and passage_max_length not in _warned:
        _warned.add(passage_max_length)
        now = settings["max_length"] or "its default"
        warnings.warn(f"passage_max_length={passage_max_length} has no effect, as in FlagEmbedding 1.4.2, which stores "
                      f"it and never reads it: passages are cut to max_length (now {now}); pass max_length to change "
                      "that", UserWarning, stacklevel=5)
    if reranker_batch_size is not None:
        check_int("reranker_batch_size", reranker_batch_size, 1)
        if settings["batch_size"] not in (reranker_batch_size, DEFAULT_BATCH_SIZE):
            raise ValueError(f"batch_size={settings['batch_size']} and reranker_batch_size={reranker_batch_size} "
                             "disagree; reranker_batch_size is FlagEmbedding's evaluation name for batch_size: pass "
                             "one of them")
        out["batch_size"] = reranker_batch_size
    return out
