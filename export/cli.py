"""rerank-export: a thin front end over export_onnx and build_engine. Imports nothing heavy until it runs.

  rerank-export --model bge-reranker-v2-gemma --fp16          export (and verify) an ONNX artifact
  rerank-export --model ... --tensorrt                        ... and build a TensorRT engine beside it
  rerank-export engine exports/bge-reranker-v2-gemma-fp16     build an engine for an existing export
  rerank-export list                                          the supported families and built-in demo models
  rerank-export cache [--clean]                               where built-in models are cached; remove them

Exit codes: 0 done; 2 bad input (unknown model, bad options, an --output that may not be written or replaced, an
unreadable or inconsistent checkpoint, an unwritable directory, missing dependency), one line on stderr naming the
file and the problem; 3 the artifact failed verification against the PyTorch reference; 130 / 143 interrupted by
SIGINT / SIGTERM (temporary files removed, nothing half-written).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Sequence

from rerank_runtime.errors import EngineError, RerankError
from rerank_runtime.hints import DEFAULT_MAX_LENGTH
from rerank_runtime.spec import MODEL_CLASSES


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rerank-export", description="Export a BGE reranker to ONNX (and TensorRT).",
                                epilog="Other commands: `rerank-export engine DIR`, `rerank-export list`, "
                                       "`rerank-export cache [--clean]`.")
    p.add_argument("--model", required=True, help="checkpoint directory, hub id (BAAI/...), short BAAI name, or a "
                   "built-in demo model (see `rerank-export list`); hub ids load from the local hub cache only")
    p.add_argument("--output", help="output directory (default: exports/<model>-<precision>)")
    p.add_argument("--model-class", choices=MODEL_CLASSES, help="override the detected reranker kind")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="fp16 (GPUs)")
    prec.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="bf16 (GPUs)")
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8", help="dynamic int8 (CPUs)")
    p.set_defaults(precision="fp32")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="FlagEmbedding max_length the "
                   f"artifact is sized and verified for (default {DEFAULT_MAX_LENGTH})")
    p.add_argument("--cutoff-layers", type=int, nargs="+", help="layerwise: end the graph at the deepest of these; "
                   "lightweight: the exits baked into the graph")
    p.add_argument("--compress-ratio", type=int, help="lightweight: token compression ratio baked into the graph")
    p.add_argument("--compress-layers", type=int, nargs="+", help="lightweight: layers before which tokens compress")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the parity check against PyTorch")
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (needs an NVIDIA GPU and the "
                   "[trt] extra; checked before the export starts)")
    _engine_args(p)
    return p


def _engine_args(p: argparse.ArgumentParser) -> None:
    from rerank_runtime.providers import DEFAULT_MAX_BATCH  # the one default, shared with EngineOptions

    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH, help="TensorRT: largest batch the engine "
                   f"serves (default {DEFAULT_MAX_BATCH}, FlagEmbedding's batch_size)")


def engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rerank-export engine", description="Build a TensorRT engine for an export.")
    p.add_argument("export_dir", help="a directory written by rerank-export")
    p.add_argument("--max-length", type=int, help="longest sequence the engine serves (default: the manifest's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine")
    _engine_args(p)
    return p


def _export(argv: Sequence[str]) -> int:
    args = export_parser().parse_args(argv)
    from .exporter import ExportOptions, export_onnx

    engine_options = None
    if args.tensorrt:  # TensorRT, cuda-bindings and a GPU, before anything is exported
        from .tensorrt_build import EngineOptions, build_environment

        engine_options = EngineOptions(max_batch_size=args.max_batch_size, overwrite=True)
        build_environment(engine_options)
    path = export_onnx(ExportOptions(
        model=args.model, output=args.output, model_class=args.model_class, precision=args.precision,
        max_length=args.max_length, cutoff_layers=tuple(args.cutoff_layers) if args.cutoff_layers else None,
        compress_ratio=args.compress_ratio, compress_layers=tuple(args.compress_layers) if args.compress_layers else None,
        overwrite=args.overwrite, verify=args.verify,
    ))
    if engine_options is not None:
        from .tensorrt_build import build_engine

        try:
            build_engine(path, engine_options)
        except RerankError as exc:
            raise EngineError(f"{exc}; the ONNX export {path} is complete and kept: build its engine again with "
                              f"`rerank-export engine {path}`") from exc
    return 0


def _engine(argv: Sequence[str]) -> int:
    args = engine_parser().parse_args(argv)
    from .tensorrt_build import EngineOptions, build_engine

    build_engine(args.export_dir, EngineOptions(max_batch_size=args.max_batch_size, max_length=args.max_length,
                                                overwrite=args.overwrite))
    return 0


def _list(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="rerank-export list").parse_args(argv)
    from .families import REGISTRY
    from .testing.factory import BUILTIN

    from .testing.factory import builtin_path, cache_root

    for family in REGISTRY.values():
        print(f"{family.name:20s} {family.model_class:26s} {', '.join(family.architectures)}")
    print("built-in demo models (generated on first use, `-trained` ones with a short training run; pass the name "
          "to --model):")
    for name in sorted(BUILTIN):
        print(f"  {name:32s} {'cached' if (builtin_path(name) / 'config.json').is_file() else ''}".rstrip())
    print(f"cached under {cache_root() / 'checkpoints'} (RERANK_CACHE); `rerank-export cache --clean` removes them")
    return 0


def _cache(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rerank-export cache", description="Where the built-in models are cached "
                                "(RERANK_CACHE, default ~/.cache/rerank), and removing them.")
    p.add_argument("--clean", action="store_true", help="remove the built-in checkpoints and converted tokenizers "
                   "(only directories laid out as this tool writes them; anything else is listed and kept)")
    args = p.parse_args(argv)
    from . import cache

    if args.clean:
        report = cache.clean()
        print(f"removed {len(report.removed)} cached built-in checkpoints and tokenizers from {cache.cache_root()}")
        for path in report.left:
            print(f"  kept {path} (not written by rerank-export)")
    else:
        print(cache.describe())
    return 0


@contextmanager
def _interrupts_handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt / Terminated and are remembered (see rerank_export.output)."""
    from .output import forget_interrupts, on_interrupt

    forget_interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted(signum: int) -> int:
    name = signal.Signals(signum).name
    print(f"rerank-export: interrupted by {name}; temporary files were removed", file=sys.stderr)
    return 128 + signum


def _fail(kind: str, exc: BaseException) -> None:
    message = " ".join(str(exc).split())  # one line, whatever the exception's text holds
    print(f"rerank-export: {kind}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = {"engine": _engine, "list": _list, "cache": _cache}.get(argv[0] if argv else "", _export)
    rest = argv[1:] if command is not _export else argv
    from rerank_runtime.errors import ParityError

    from .output import interrupted

    try:
        with _interrupts_handled():
            return command(rest)
    except (KeyboardInterrupt, Exception) as exc:
        signum = interrupted()
        if signum is not None or isinstance(exc, KeyboardInterrupt):  # a library may turn it into its own error
            return _interrupted(signum or signal.SIGINT)
        if isinstance(exc, ParityError):
            _fail("verification failed", exc)
            return 3
        if isinstance(exc, (RerankError, OSError)):  # OSError: a path that cannot be read or written, named by it
            _fail("error", exc)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
