"""What to do instead: the exact `rerank-export` command that makes the export a call needs, "did you mean ...?",
and warnings attributed to the user's own line.

Every message that tells a user to export something prints a command that runs as printed: `export_command` spells
the flags, `Remake` rebuilds the command an existing export was made with, changing only what the call needs.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .kinds import get_kind

if TYPE_CHECKING:
    from .manifest import Manifest

DEFAULT_MAX_LENGTH = 512  # FlagEmbedding's max_length default, and `rerank-export --max-length`'s
_PRECISION_SUFFIX = re.compile(r"-(fp32|fp16|bf16|int8)$")


def export_command(model: str, *, output: str | None = None, precision: str = "fp32",
                   max_length: int = DEFAULT_MAX_LENGTH, cutoff_layers: Sequence[int] | None = None,
                   compress_ratio: int = 1, compress_layers: Sequence[int] = ()) -> str:
    """`rerank-export ...` with every flag that differs from the defaults, quoted for a POSIX shell (a "<placeholder>"
    stays as it is)."""
    parts = ["rerank-export", "--model", _quote(model)]
    if precision != "fp32":
        parts.append(f"--{precision}")
    if max_length != DEFAULT_MAX_LENGTH:
        parts += ["--max-length", str(max_length)]
    if cutoff_layers:
        parts += ["--cutoff-layers", *map(str, cutoff_layers)]
    if compress_ratio > 1:
        parts += ["--compress-ratio", str(compress_ratio), "--compress-layers", *map(str, compress_layers)]
    if output is not None:
        parts += ["--output", _quote(output)]
    return " ".join(parts)


def _quote(value: str) -> str:
    return value if value.startswith("<") and value.endswith(">") else shlex.quote(value)


def model_name(model: str) -> str:
    """The name an export records for `--model MODEL` (its base name), and names its default output after."""
    return Path(model.rstrip("/")).name or "model"


def default_output(model: str, precision: str = "fp32") -> str:
    """Where `rerank-export --model MODEL` writes by default: exports/<model name>-<precision>."""
    return f"exports/{model_name(model)}-{precision}"


@dataclass(frozen=True)
class Remake:
    """How an export was made (from its manifest), to print the command that makes a variant of it."""

    export_dir: str
    model: str  # the checkpoint as rerank-export takes it
    model_class: str
    precision: str
    max_length: int
    cutoff_layers: tuple[int, ...] | None = None
    compress_ratio: int = 1
    compress_layers: tuple[int, ...] = field(default=())

    @classmethod
    def of(cls, manifest: Manifest, export_dir: str | os.PathLike[str]) -> Remake:
        """From an export's manifest; the checkpoint is its recorded source while that directory exists here, else
        the export's model name (a built-in or BAAI short name)."""
        m = manifest
        cutoff = m.defaults.get("cutoff_layers")
        return cls(export_dir=str(export_dir), model=m.source if Path(m.source).is_dir() else m.model_name,
                   model_class=m.spec.model_class, precision=m.precision, max_length=m.max_length,
                   cutoff_layers=tuple(cutoff) if cutoff else None, compress_ratio=m.compress_ratio,
                   compress_layers=tuple(m.compress_layers))

    def command(self, *, precision: str | None = None, cutoff_layers: Sequence[int] | None = None,
                compress_ratio: int | None = None, compress_layers: Sequence[int] | None = None) -> str:
        """The command for this export with the given settings changed; its output is a sibling directory named
        after what changed."""
        precision = precision or self.precision
        changed_exits = cutoff_layers is not None or compress_ratio is not None
        cutoff = tuple(cutoff_layers) if cutoff_layers is not None else self.cutoff_layers
        ratio = compress_ratio if compress_ratio is not None else self.compress_ratio
        layers = tuple(compress_layers) if compress_layers is not None else self.compress_layers
        stem = _PRECISION_SUFFIX.sub("", self.export_dir.rstrip("/"))
        if changed_exits:
            stem += "-cutoff" + "-".join(map(str, cutoff or ())) + (f"-ratio{ratio}" if ratio > 1 else "")
        return export_command(self.model, output=f"{stem}-{precision}", precision=precision,
                              max_length=self.max_length, cutoff_layers=cutoff, compress_ratio=ratio,
                              compress_layers=layers if ratio > 1 else ())


def wrong_kind(where: str, have: str, asked: str) -> str:
    """The message for a model of kind `have` loaded as kind `asked`: which class scores it instead."""
    right, wrong = get_kind(have).class_name, get_kind(asked).class_name
    return (f"{where} holds a {have} model, which {right} scores; {wrong} scores {asked} models only. Use "
            f"{right}({where!r}), or FlagAutoReranker.from_finetuned({where!r}), which reads the kind from the model")


def describe_exits(exits: Sequence[tuple[int, int]]) -> str:
    """'layer 2 (head 0), layer 3 (head 1)', or "one score output ('score')" for no exits."""
    if not exits:
        return "one score output ('score')"
    return ", ".join(f"layer {layer} (head {head})" for layer, head in exits)


def exits_message(where: str, have: Sequence[tuple[int, int]], want: Sequence[tuple[int, int]],
                  compression: tuple[int, Sequence[int]], remake: Remake | None) -> str:
    """A graph lacks outputs a call needs: what it has, what the call needs, why (the kind's rule that maps
    cutoff_layers to (layer, head) exits, when a layer is there with another head) and what to do."""
    layers = sorted({layer for layer, _ in want})
    missing = [exit_ for exit_ in want if tuple(exit_) not in {tuple(e) for e in have}]
    text = (f"{where} serves {describe_exits(have)}; the call needs {describe_exits(want)} (missing: "
            f"{describe_exits(missing) if missing else 'the single score output'})")
    if not want:
        return text + "; load the export with the class of its kind (FlagAutoReranker.from_finetuned picks it)"
    have_layers = {layer for layer, _ in have}
    other_head = [layer for layer, head in want if layer in have_layers and (layer, head) not in have]
    kind = get_kind(remake.model_class) if remake is not None else None
    if other_head and kind is not None:
        made_for = f"made for cutoff_layers {list(remake.cutoff_layers)} " if remake and remake.cutoff_layers else ""
        text += (f". {kind.exit_rule}; so the export {made_for}scores layer {other_head[0]} with another head than "
                 "this call needs")
        if kind.bakes_every_head:  # its exports keep each layer's own head only
            return text + f": pass the cutoff layers in ascending order ({layers}) to score each with its own head"
    if remake is None:
        return text + "; export a model for these cutoff layers with rerank-export --cutoff-layers"
    made = f"call with the export's cutoff_layers {list(remake.cutoff_layers)}, or " if remake.cutoff_layers else ""
    ratio, stages = compression
    command = remake.command(cutoff_layers=layers, compress_ratio=ratio, compress_layers=stages)
    return text + f". To score this call, {made}export one for cutoff_layers {layers}: `{command}`"


def compression_message(where: str, have: tuple[int, Sequence[int]], want: tuple[int, Sequence[int]],
                        layers: Sequence[int], remake: Remake | None) -> str:
    """A graph bakes other token compression than a call needs."""
    text = (f"{where} was exported with compress_ratio={have[0]}, compress_layers={list(have[1])}; the call needs "
            f"compress_ratio={want[0]}, compress_layers={list(want[1])}. Token compression is baked into the graph: "
            "call with the export's settings, or export another")
    if remake is None:
        return text + " with rerank-export --compress-ratio and --compress-layers"
    return text + f": `{remake.command(cutoff_layers=layers, compress_ratio=want[0], compress_layers=want[1])}`"


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn attributed to the first caller outside this package (and the exporter), so that the warning
    names the user's line whatever path led here."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("rerank_runtime", "rerank_export")):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
