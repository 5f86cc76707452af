"""export_onnx: a checkpoint of any supported kind to an ONNX artifact the runtime serves, verified on the way out."""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rerank_runtime._deps import installed_versions
from rerank_runtime.errors import ExportError, ParityError
from rerank_runtime.hints import DEFAULT_MAX_LENGTH, default_output, model_name
from rerank_runtime.integrity import describe_tokenizer
from rerank_runtime.kinds import DEFAULT_COMPRESS_LAYERS, build_request, get_kind
from rerank_runtime.manifest import GraphInfo, Manifest, TensorSpec
from rerank_runtime.spec import MODEL_CLASSES, GraphRequest, ModelSpec

from .checkpoint import load_model, model_spec, read_json, resolve_model, tokenizer_file
from .families import FamilySpec, detect_family
from .output import Target, check_output, discard, make_work_dir, publish, remove_stale, reraise_interrupt
from .precision import PRECISIONS, cast_weights
from .progress import Progress
from .weights import check_weights

PHASES = ["load", "trace", "optimise", "verify"]


@dataclass(frozen=True)
class ExportOptions:
    model: str
    output: str | None = None
    model_class: str | None = None
    precision: str = "fp32"
    max_length: int = DEFAULT_MAX_LENGTH
    cutoff_layers: tuple[int, ...] | None = None
    compress_ratio: int | None = None
    compress_layers: tuple[int, ...] | None = None
    overwrite: bool = False
    verify: bool = True


@dataclass(frozen=True)
class ExportPlan:
    """Everything decided before any heavy work starts."""

    options: ExportOptions
    checkpoint: Path
    config: dict[str, Any]
    family: FamilySpec
    spec: ModelSpec
    request: GraphRequest
    defaults: dict[str, Any]
    output: Path
    target: Target  # what is at the output now, and may be replaced


def plan_export(opts: ExportOptions, report: Progress | None = None) -> ExportPlan:
    """Validate every option against the model; raises before anything is loaded or written (a built-in model is
    generated on first use, which `report` is told about)."""
    if opts.precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {opts.precision!r}")
    if opts.model_class is not None and opts.model_class not in MODEL_CLASSES:
        raise ExportError(f"--model-class must be one of {MODEL_CLASSES}, got {opts.model_class!r}")
    if opts.max_length < 2:
        raise ExportError(f"--max-length must be at least 2, got {opts.max_length}")
    checkpoint = resolve_model(opts.model, report.say if report is not None else None)
    config = read_json(checkpoint / "config.json")
    model_class = opts.model_class
    if model_class is None:
        from .reference import detect_model_class

        model_class = detect_model_class(str(checkpoint) if Path(opts.model).is_dir() else opts.model)
    family = detect_family(config, model_class)
    check_weights(checkpoint, config, family)  # config against the weights' shapes, before anything is built
    spec = model_spec(checkpoint, config, family)
    if spec.max_positions is not None and opts.max_length > spec.max_positions:
        raise ExportError(f"--max-length {opts.max_length} is more than this model serves: its position table serves "
                          f"{spec.max_positions} tokens; pass --max-length {spec.max_positions} or less")
    request, defaults = _request(opts, family, spec)
    output = Path(opts.output or default_output(opts.model, opts.precision))
    target = check_output(output, opts.overwrite, checkpoint)
    return ExportPlan(opts, checkpoint, config, family, spec, request, defaults, output, target)


def _request(opts: ExportOptions, family: FamilySpec, spec: ModelSpec) -> tuple[GraphRequest, dict[str, Any]]:
    kind = get_kind(family.model_class)
    compressing = opts.compress_ratio is not None or opts.compress_layers is not None
    if opts.cutoff_layers is not None and not kind.takes_cutoff:
        raise ExportError(f"--cutoff-layers applies to layerwise and lightweight rerankers; {family.name} has one score")
    if compressing and not kind.takes_compression:
        raise ExportError(f"--compress-ratio/--compress-layers apply to the lightweight reranker only, not {family.name}")
    if not kind.takes_cutoff:
        return GraphRequest(), {}
    cutoff = list(opts.cutoff_layers) if opts.cutoff_layers is not None else None
    ratio = opts.compress_ratio if opts.compress_ratio is not None else 1
    layers = list(opts.compress_layers) if opts.compress_layers is not None else list(DEFAULT_COMPRESS_LAYERS)
    try:
        request = build_request(kind, spec, cutoff_layers=cutoff, compress_ratio=ratio, compress_layers=layers)
    except (TypeError, ValueError) as exc:
        raise ExportError(str(exc)) from None
    if kind.bakes_every_head:  # every head up to the deepest requested layer: any cutoff_layers up to it is served
        deepest, start = max(request.exits)[0], spec.start_layer or 0
        return GraphRequest(exits=tuple((layer, layer - start) for layer in range(start, deepest + 1))), {
            "cutoff_layers": cutoff}
    if not kind.takes_compression:
        return request, {"cutoff_layers": cutoff}
    _refuse_idle_compression(opts, ratio, layers, request)
    return request, {"cutoff_layers": cutoff, "compress_ratio": ratio, "compress_layers": layers}


def _refuse_idle_compression(opts: ExportOptions, ratio: int, layers: list[int], request: GraphRequest) -> None:
    """Compression flags that would bake nothing: FlagEmbedding skips such stages silently, an export says so."""
    if opts.compress_layers is not None and ratio == 1:
        raise ExportError(f"--compress-layers {layers} has no effect at compress ratio 1 (no compression); "
                          "add --compress-ratio 2 or more, or drop --compress-layers")
    idle = sorted(set(layers) - set(request.compress_layers)) if ratio > 1 else []
    if idle:
        deepest = max(layer for layer, _ in request.exits)
        raise ExportError(f"compress layers {idle} would never run: a stage runs before layer c only when "
                          f"0 < c < {deepest} (the deepest exit); pass --compress-layers within 1..{deepest - 1}"
                          + (" (the default is [8])" if opts.compress_layers is None else ""))


def max_sequence_length(plan: ExportPlan, tokenizer: Any) -> int:
    """The longest sequence FlagEmbedding's layout makes at max_length with the default prompt."""
    n = plan.options.max_length
    if not get_kind(plan.family.model_class).prompted:  # the pair template: max_length is the whole sequence
        return n
    layout = describe_tokenizer(tokenizer, plan.spec)
    sep, prompt = len(layout.separator_ids), len(layout.prompt_ids)
    return int(math.ceil((1 + n + 2 * sep + 2 * prompt) / 8) * 8)


def export_onnx(opts: ExportOptions, progress: Progress | None = None) -> Path:
    """Export, optimise, write manifest and tokenizer, verify; the output appears only when all of it succeeded.

    Nothing that is not provably ours is deleted or replaced: see rerank_export.output."""
    report = progress or Progress(PHASES if opts.verify else PHASES[:-1])
    plan = plan_export(opts, report)
    parent = plan.output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale(parent):
            report.say(f"removed {stale}, left behind by an export that was killed")
        work = make_work_dir(parent, plan.output.name)
    except OSError as exc:
        raise ExportError(f"cannot write the export beside {plan.output}: {exc.strerror} ({exc.filename}); "
                          "choose an --output in a writable directory") from None
    try:  # nothing between the work directory's creation and here: an interrupt must find it discarded
        report.say(f"exporting {plan.checkpoint} ({plan.family.name}, {plan.family.model_class}) at {opts.precision}")
        _build(plan, work, report)
        reraise_interrupt()  # an interrupt a library swallowed (torch's exporter may retry) still stops the export
        publish(work, plan.target)
    except BaseException:
        discard(work)
        raise
    report.say(f"wrote {plan.output}")
    return plan.output


def _build(plan: ExportPlan, work: Path, report: Progress) -> None:
    from tokenizers import Tokenizer

    from .onnx_export import trace_to_onnx

    opts = plan.options
    with report.phase("load"):
        model = load_model(plan.checkpoint, plan.config, plan.family)
        if opts.precision in ("fp16", "bf16"):
            cast_weights(model, opts.precision)
        wrapper = plan.family.build_wrapper(model, plan.config, plan.request, {"yes_token_id": plan.spec.yes_token_id})
    onnx_path = work / "model.onnx"
    with report.phase("trace"), _quiet_torchvision():
        external = trace_to_onnx(wrapper.eval(), plan.family, plan.request, plan.spec.pad_token_id, onnx_path)
    reraise_interrupt()
    del model, wrapper
    with report.phase("optimise"):
        if opts.precision == "int8":
            from .quantize import int8_plan, quantize_int8

            quantise, keep = int8_plan(onnx_path)
            report.say(f"quantising {len(quantise)} weight matmuls to int8 ({len(keep)} stay fp32: the first layer, "
                       "every MLP down projection and the score heads)")
            with _quiet_preprocessing_advice():
                external = quantize_int8(onnx_path, external)
    shutil.copyfile(tokenizer_file(plan.checkpoint), work / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(work / "tokenizer.json"))
    manifest = Manifest(
        model_name=model_name(opts.model), source=os.path.abspath(plan.checkpoint), family=plan.family.name,
        spec=plan.spec,
        precision=opts.precision, graph=graph_info(onnx_path, external), max_length=opts.max_length,
        max_sequence_length=max_sequence_length(plan, tokenizer), exits=plan.request.exits,
        compress_ratio=plan.request.compress_ratio, compress_layers=plan.request.compress_layers,
        defaults=plan.defaults, versions=versions(),
    )  # write() records the files' sizes and hashes and the tokenizer's layout
    manifest.write(work)
    if opts.verify:
        from .verify import verify

        with report.phase("verify"):
            try:
                result = verify(work, plan.checkpoint, plan.family.model_class, opts.precision, opts.max_length,
                                _verify_call(plan), report.counter)
            except ParityError as exc:  # name the output, not the temporary directory that is about to go
                raise ParityError(
                    f"nothing was written to {plan.output}: " + str(exc).replace(str(work), "the export")
                    + "; export another precision, or pass --no-verify to write it unverified",
                    diffs=exc.diffs, tolerance=exc.tolerance,
                ) from None
        report.say(f"verified on {result['pairs']} probe pairs x {result['outputs']} outputs: max abs diff "
                   f"{result['max_abs_diff']:.2e}, Spearman {result['spearman']:.4f} ({result['method']})")
        replace(manifest, verification=result).write(work)


@contextmanager
def _dropping(logger_name: str, prefix: str) -> Iterator[None]:
    """Drop the records of one logger whose message starts with `prefix`, for the duration; every other record of
    that logger still shows."""
    logger = logging.getLogger(logger_name)

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _quiet_torchvision() -> AbstractContextManager[None]:
    """torch.onnx logs "torchvision is not installed. Skipping torchvision::nms" (one line per torchvision op) on
    every export: no reranker graph uses those ops."""
    return _dropping("torch.onnx._internal.exporter._registration", "torchvision is not installed")


def _quiet_preprocessing_advice() -> AbstractContextManager[None]:
    """ONNX Runtime's quantiser advises, on the root logger, "Please consider to run pre-processing before
    quantization" (shape inference for static quantisation); the int8 plan is dynamic and measured as it is."""
    return _dropping("", "Please consider to run pre-processing before quantization")


def _verify_call(plan: ExportPlan) -> dict[str, Any]:
    """compute_score arguments that exercise every output (the reference knows nothing of the artifact's defaults)."""
    if get_kind(plan.family.model_class).bakes_every_head:
        return {"cutoff_layers": [layer for layer, _ in plan.request.exits]}
    return {k: v for k, v in plan.defaults.items() if v is not None}


def graph_info(path: Path, external: list[str]) -> GraphInfo:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool"}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
        return TensorSpec(value.name, names.get(t.elem_type, str(t.elem_type)), dims)

    return GraphInfo(file=path.name, inputs=tuple(spec(v) for v in model.graph.input),
                     outputs=tuple(spec(v) for v in model.graph.output), external_data=tuple(external))


def versions() -> dict[str, str]:
    """The tools an export is made with, as manifest.json records them."""
    return installed_versions(("bge-rerank-fast", "torch", "onnx", "onnxscript", "onnxruntime", "tokenizers",
                               "transformers"))
