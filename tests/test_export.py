"""The exporter on every tiny kind: manifests, graph parity over a shape grid, early exit, and int8 quality.

Every export comes from the session fixture `exported` (verified at export time, cached per session), so each
(family, precision, options) is traced once however many tests read it.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from close import assert_close
from conftest import FAMILIES
from rerank_export.checkpoint import load_model, read_json
from rerank_export.families import REGISTRY
from rerank_export.onnx_export import input_names
from rerank_export.probe import PROBE_PAIRS
from rerank_export.quantize import int8_plan, node_scope
from rerank_export.reference import FlagAutoReranker as Reference
from rerank_export.testing.recipes import RECIPES
from rerank_export.verify import CPU_METHOD, widen_bf16
from rerank_runtime import LayerWiseFlagLLMReranker, UnsupportedRequestError
from rerank_runtime.compression import build_plan
from rerank_runtime.integrity import record_file
from rerank_runtime.kinds import get_kind
from rerank_runtime.manifest import Manifest
from rerank_runtime.rerankers import FlagAutoReranker as Runtime
from rerank_runtime.spec import LAYERWISE, GraphRequest
from rerank_runtime.tolerances import allclose, tolerance

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Every kind at every precision, int8 included: the trained tiny checkpoints rank the probe set with well separated
# scores, so each export must pass its ranking bar (test_cli checks a refusal on a model built to fail it).
EXPORTS = [(f, p) for f in FAMILIES for p in PRECISIONS]
ONNX_DTYPES = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
# (batch, sequence): batch 1, lengths never used at export (which traced batch 2 x 24), ragged rows
GRID = [(1, 3), (1, 200), (3, 17), (8, 64), (5, 130)]


def _call(manifest: Manifest) -> dict:
    """compute_score arguments that read every output of the artifact (as the exporter's verification does)."""
    if manifest.spec.model_class == LAYERWISE:
        return {"cutoff_layers": [layer for layer, _ in manifest.exits]}
    return {k: v for k, v in manifest.defaults.items() if v is not None}


@pytest.fixture(scope="module")
def reference_scores(checkpoint):
    """family -> fp32 PyTorch scores of the probe pairs, [outputs, pairs], for the artifacts' default outputs."""
    cache: dict[str, np.ndarray] = {}

    def get(family: str, manifest: Manifest) -> np.ndarray:
        if family not in cache:
            ref = Reference.from_finetuned(str(checkpoint(family)), model_class=manifest.spec.model_class,
                                           max_length=manifest.max_length, batch_size=4)
            cache[family] = np.atleast_2d(ref.compute_score_array(PROBE_PAIRS, **_call(manifest)))
        return cache[family]

    return get


def _request(manifest: Manifest) -> GraphRequest:
    return GraphRequest(exits=manifest.exits, compress_ratio=manifest.compress_ratio,
                        compress_layers=manifest.compress_layers)


def _expected_exits(family: str, config: dict) -> tuple[tuple[int, int], ...]:
    settings = RECIPES[family].export
    layers = REGISTRY[family].layers(config)
    if layers is None:
        return ()
    n, start, _ = layers
    if REGISTRY[family].model_class == LAYERWISE:  # every head up to the deepest cutoff
        return tuple((layer, layer - start) for layer in range(start, max(settings.get("cutoff_layers", (n,))) + 1))
    return tuple((layer, i) for i, layer in enumerate(sorted(settings["cutoff_layers"])))


# --- 1. every kind at every precision the CPU runs: the manifest records what was exported ---------------------------


@pytest.mark.parametrize("family,precision", EXPORTS)
def test_manifest_describes_the_graph(exported, checkpoint, family, precision):
    out = exported(family, precision)
    m = Manifest.read(out)
    spec, config = REGISTRY[family], read_json(checkpoint(family) / "config.json")
    assert (m.family, m.spec.model_class, m.precision, m.format) == (family, spec.model_class, precision, "onnx")
    assert m.source == str(checkpoint(family)) and m.graph.file == "model.onnx"
    assert m.exits == _expected_exits(family, config)
    settings = RECIPES[family].export
    want_compression = (settings.get("compress_ratio", 1), settings.get("compress_layers", ()))
    assert (m.compress_ratio, m.compress_layers) == want_compression

    names = input_names(spec, _request(m))
    want_inputs = {n: ("int64", ("batch", "sequence")) for n in names[:2]}
    for k in range(len(m.compress_layers)):
        shape = ("batch", f"compressed_{k}", m.compress_ratio)
        want_inputs.update({f"compress_index_{k}": ("int64", shape), f"compress_weight_{k}": ("float32", shape)})
    assert {t.name: (t.dtype, t.shape) for t in m.graph.inputs} == want_inputs
    outputs = [f"score_l{layer}_h{head}" for layer, head in m.exits] or ["score"]
    assert [(t.name, t.dtype, t.shape) for t in m.graph.outputs] == [(n, "float32", ("batch",)) for n in outputs]
    _check_graph_io(out / "model.onnx", m)


def _check_graph_io(path: Path, m: Manifest) -> None:
    """The ONNX file itself has the manifest's inputs and outputs, with the same named dynamic axes."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def io(values) -> list[tuple[str, tuple]]:
        return [(v.name, tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)) for v in values]

    assert io(graph.input) == [(t.name, t.shape) for t in m.graph.inputs]
    assert io(graph.output) == [(t.name, t.shape) for t in m.graph.outputs]


@pytest.mark.parametrize("family,precision", EXPORTS)
def test_manifest_records_layout_defaults_and_versions(exported, checkpoint, family, precision):
    m = Manifest.read(exported(family, precision))
    kind = get_kind(REGISTRY[family].model_class)
    settings = RECIPES[family].export
    want_defaults = {}
    if kind.takes_cutoff:
        cutoff = settings.get("cutoff_layers")
        want_defaults["cutoff_layers"] = list(cutoff) if cutoff else None
    if kind.takes_compression:
        want_defaults["compress_ratio"] = settings["compress_ratio"]
        want_defaults["compress_layers"] = list(settings["compress_layers"])
    assert m.defaults == want_defaults
    tok = Tokenizer.from_file(str(checkpoint(family) / "tokenizer.json"))
    layout = m.token_layout
    assert layout is not None and layout.vocab_size == tok.get_vocab_size(with_added_tokens=True)
    assert layout.pad_token == tok.id_to_token(m.spec.pad_token_id)
    assert layout.bos_token == (None if m.spec.bos_token_id is None else tok.id_to_token(m.spec.bos_token_id))
    assert m.max_length == 512 and m.max_sequence_length >= m.max_length
    if kind.default_prompt is None:
        assert layout.separator_ids == layout.prompt_ids == () and m.spec.yes_token_id is None
        assert m.spec.pair_prefix and m.spec.pair_suffix
    else:
        separator = tok.encode("\n", add_special_tokens=False).ids
        prompt = tok.encode(kind.default_prompt, add_special_tokens=False).ids
        assert list(layout.separator_ids) == separator and list(layout.prompt_ids) == prompt
        assert m.spec.yes_token_id == tok.encode("Yes", add_special_tokens=False).ids[0]
        assert m.max_sequence_length % 8 == 0  # FlagEmbedding pads decoder batches to a multiple of 8
        assert m.max_sequence_length >= 1 + m.max_length + 2 * len(separator) + len(prompt)
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "tokenizers"):
        assert m.versions[dist] == metadata.version(dist)
    out = exported(family, precision)
    assert {name: record_file(out / name) for name in m.artifact_files()} == m.files


@pytest.mark.parametrize("family,precision", EXPORTS)
def test_verification_block_is_what_the_artifact_scores(exported, reference_scores, family, precision, tmp_path):
    """The recorded max diff is re-measured here from the artifact, and lies within the table's tolerance."""
    out = exported(family, precision)
    m = Manifest.read(out)
    v, tol = m.verification, tolerance(precision, "cpu")
    assert v["passed"] is True and v["provider"] == "CPUExecutionProvider" and v["pairs"] == len(PROBE_PAIRS)
    assert v["outputs"] == max(1, len(m.exits)) and v["method"] == CPU_METHOD[precision]
    atol = tol.atol if np.isfinite(tol.atol) else None  # int8 is judged by ranking only; JSON has no Infinity
    assert v["tolerance"] == {"atol": atol, "rtol": tol.rtol, "min_spearman": tol.min_spearman}
    assert "Infinity" not in (out / "manifest.json").read_text()
    if precision == "bf16":
        assert "widened to fp32" in v["method"]
        target = tmp_path / "widened"
        widen_bf16(out, target)
    else:
        assert v["method"] == "ONNX Runtime CPU, as exported"
        target = out
    expected = reference_scores(family, m)
    runtime = Runtime.from_finetuned(str(target), model_class=m.spec.model_class, devices="cpu", batch_size=4)
    got = np.atleast_2d(runtime.compute_score_array(PROBE_PAIRS, **_call(m)))
    diff = np.abs(got - expected)
    assert diff.max() == pytest.approx(v["max_abs_diff"], rel=1e-3, abs=1e-6)
    assert_close(got, expected, f"{family} {precision} runtime vs reference", tol)
    assert v["spearman"] >= tol.min_spearman
    if precision != "fp32":
        assert v["max_abs_diff"] > tolerance("fp32", "cpu").atol  # the artifact really is reduced precision


@pytest.mark.parametrize("family,precision", [(f, p) for f, p in EXPORTS if p != "fp32"])
def test_weights_are_stored_at_the_precision(exported, family, precision):
    model = onnx.load(str(exported(family, precision) / "model.onnx"))
    types = [t.data_type for t in model.graph.initializer if len(t.dims) == 2]
    ops = [n.op_type for n in model.graph.node]
    if precision == "int8":
        quantised, _ = int8_plan(exported(family, "fp32") / "model.onnx")
        assert ops.count("MatMulInteger") == len(quantised) > 0
        assert onnx.TensorProto.INT8 in types
    else:
        assert types and set(types) == {ONNX_DTYPES[precision]}, f"{precision} export has 2-D weights of types {types}"


# --- 2. graph parity: ONNX Runtime on model.onnx against the torch wrapper, identical feeds, a shape grid -----------


def _feeds(m: Manifest, vocab: int, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Random ids, right padding with ragged rows (row 0 full length), and a compression plan when the graph has one."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[seq], rng.integers(min(2, seq), seq + 1, size=batch - 1)])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask > 0, rng.integers(5, vocab, size=(batch, seq)), m.spec.pad_token_id).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if m.compress_layers:  # plausible spans: a query a quarter of the row, a prompt a fifth, the passage in between
        query = np.maximum(1, lengths // 4)
        prompt = np.maximum(1, np.minimum(lengths // 5, lengths - query - 1))
        feeds.update(build_plan(mask, query, prompt, m.compress_ratio, len(m.compress_layers)))
    return feeds


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_matches_the_torch_wrapper_over_shapes(exported, checkpoint, family):
    import onnxruntime as ort
    import torch

    out = exported(family)
    m = Manifest.read(out)
    spec, config = REGISTRY[family], read_json(checkpoint(family) / "config.json")
    model = load_model(checkpoint(family), config, spec)
    wrapper = spec.build_wrapper(model, config, _request(m), {"yes_token_id": m.spec.yes_token_id}).eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names, outputs = input_names(spec, _request(m)), [o.name for o in session.get_outputs()]
    tol = tolerance("fp32", "cpu")
    problems = []
    for seed, (batch, seq) in enumerate(GRID):
        feeds = _feeds(m, config["vocab_size"], batch, seq, seed)
        with torch.no_grad():
            want = wrapper(*(torch.from_numpy(feeds[n]) for n in names))
        want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
        got = session.run(outputs, feeds)
        for name, g, w in zip(outputs, got, want):
            assert g.shape == w.shape == (batch,), f"{name} at {batch}x{seq}: {g.shape} vs {w.shape}"
            close = allclose(g, w, tol)
            if not close.ok:
                problems.append(f"{name} at batch {batch} x seq {seq}: max diff {close.max_abs_diff:.3g}")
    assert not problems, f"ONNX vs torch beyond atol {tol.atol} + rtol {tol.rtol}: " + "; ".join(problems)


# --- 3. early exit: --cutoff-layers 3 ends the layerwise graph at layer 3 -------------------------------------------


def _decoder_layers(path: Path) -> set[int]:
    """Indices of the decoder layers whose nodes are in the graph (from the module names the exporter records)."""
    layers = set()
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        scope = node_scope(node) or ""
        if ".layers." in scope:
            layers.add(int(scope.split(".layers.")[1].split(".")[0]))
    return layers


def test_cutoff_layers_end_the_layerwise_graph_early(exported, checkpoint):
    full, short = exported("minicpm_layerwise"), exported("minicpm_layerwise", cutoff_layers=(3,))
    n, start, _ = REGISTRY["minicpm_layerwise"].layers(read_json(checkpoint("minicpm_layerwise") / "config.json"))
    assert _decoder_layers(full / "model.onnx") == set(range(n))
    assert _decoder_layers(short / "model.onnx") == {0, 1, 2}  # layers 1..3, counted from 0
    matmuls = [sum(nd.op_type == "MatMul" for nd in onnx.load(str(d / "model.onnx")).graph.node) for d in (full, short)]
    assert matmuls[1] < matmuls[0]
    assert (short / "model.onnx").stat().st_size < (full / "model.onnx").stat().st_size
    m = Manifest.read(short)
    assert m.exits == ((2, 0), (3, 1)) and [t.name for t in m.graph.outputs] == ["score_l2_h0", "score_l3_h1"]
    assert m.defaults == {"cutoff_layers": [3]} and start == 2


def test_runtime_serves_the_early_exit_heads_and_refuses_others(exported, checkpoint):
    short = exported("minicpm_layerwise", cutoff_layers=(3,))
    pairs = PROBE_PAIRS[:6]
    runtime = LayerWiseFlagLLMReranker(str(short), devices="cpu", batch_size=4)
    reference = Reference.from_finetuned(str(checkpoint("minicpm_layerwise")), model_class=LAYERWISE, batch_size=4)
    tol = tolerance("fp32", "cpu")
    for cutoff in ([2], [3]):
        got = runtime.compute_score_array(pairs, cutoff_layers=cutoff)
        want = reference.compute_score_array(pairs, cutoff_layers=cutoff)
        assert_close(got, want, f"cutoff {cutoff}", tol)
    default = runtime.compute_score_array(pairs)  # the baked default is [3]
    np.testing.assert_array_equal(default, runtime.compute_score_array(pairs, cutoff_layers=[3]))
    with pytest.raises(UnsupportedRequestError) as err:
        runtime.compute_score(pairs, cutoff_layers=[6])
    assert "layer 2 (head 0), layer 3 (head 1)" in str(err.value) and "layer 6" in str(err.value)


# --- 5. int8: what the quantisation plan keeps in fp32 ---------------------------------------------------------------


def _layer(scope: str) -> int | None:
    found = re.search(r"layers?\.(\d+)(\.|$)", scope)
    return int(found.group(1)) if found else None


def _is_down_projection(scope: str) -> bool:
    return scope.endswith("mlp.down_proj") or re.search(r"layer\.\d+\.output\.dense$", scope) is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_plan_keeps_down_projections_and_the_first_layer(exported, family):
    path = exported(family) / "model.onnx"
    quantised, kept = int8_plan(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    scope = {n.name: node_scope(n) or "" for n in graph.node}
    layers = {_layer(s) for s in scope.values()} - {None}
    assert layers == set(range(len(layers))) and len(layers) >= 2
    assert sorted(_layer(scope[n]) for n in kept if _is_down_projection(scope[n])) == sorted(layers)
    assert [scope[n] for n in quantised if _layer(scope[n]) == 0 or _is_down_projection(scope[n])] == []
    per_layer = {layer: sum(_layer(scope[n]) == layer for n in quantised) for layer in layers}
    assert per_layer[0] == 0 and all(per_layer[layer] >= 4 for layer in layers - {0}), per_layer  # q, k, v, o at least


def test_int8_of_a_graph_with_external_data_keeps_one_data_file(checkpoint, tmp_path, monkeypatch):
    """Graphs over protobuf's 2 GB keep weights beside model.onnx; int8 rewrites them and drops the fp32 file."""
    import rerank_export.onnx_export as onnx_export
    from rerank_export.exporter import ExportOptions, export_onnx
    from rerank_export.progress import Progress

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # every export takes the large-model path
    opts = ExportOptions(model=str(checkpoint("xlm_roberta")), output=str(tmp_path / "out"), precision="int8")
    out = export_onnx(opts, Progress([], quiet=True))
    m = Manifest.read(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    assert m.graph.external_data == ("model.onnx.data",) and m.verification["passed"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    model = onnx.load(str(out / "model.onnx"))  # loads the weights from model.onnx.data
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) > 0
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size
