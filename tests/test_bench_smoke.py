"""The benchmark harness's pure parts: FLOP counts, percentiles, the parity gate, and the --device cuda refusal.

Nothing here times a model; benchmarks/bench_rerank.py is a script, not a test (see benchmarks/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_flops  # noqa: E402
import bench_stats  # noqa: E402
from bench_flops import Arch, pair_flops  # noqa: E402

ENCODER, DECODER = "encoder-only-base", "decoder-only-base"
LAYERWISE, LIGHTWEIGHT = "decoder-only-layerwise", "decoder-only-lightweight"


@pytest.fixture(scope="module")
def tiny():
    from rerank_export.testing.recipes import RECIPES

    return {name: recipe.sizes["tiny"] for name, recipe in RECIPES.items()}


# --- FLOP counts against hand counts (10 real tokens, 2 FLOPs per multiply-add) --------------------------------------


def test_encoder_flops_match_a_hand_count(tiny):
    c = tiny["xlm_roberta"]
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (32, 64, 2)
    per_token = 4 * 32 * 32 + 2 * 32 * 64  # Q, K, V, O + MLP up/down = 8192 MACs
    attention = 2 * 10 * 10 * 32  # Q.K^T and P.V, bidirectional, all heads together = 6400 MACs
    head = 32 * 32 + 32  # classifier dense on <s>, out_proj
    expected = 2 * (2 * (10 * per_token + attention) + head)
    assert expected == 355392
    assert pair_flops(Arch.from_config(c, ENCODER), 10) == expected


def test_gemma_flops_count_gqa_causal_attention_and_only_the_yes_row(tiny):
    c = tiny["gemma"]
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 1, 8)
    per_token = 32 * 32 + 32 * 32 + 32 * 8 + 32 * 8 + 3 * 32 * 64  # q, o, k, v (one KV head), gated MLP = 8704
    attention = 2 * 4 * 8 * (10 * 11 // 2)  # lower triangle only: 55 (query, key) pairs
    expected = 2 * (2 * (10 * per_token + attention) + 32)  # + the 'Yes' row dot product, not 512 vocab rows
    assert expected == 362304
    assert pair_flops(Arch.from_config(c, DECODER), 10) == expected


def test_layerwise_flops_stop_at_the_deepest_cutoff_and_count_each_exit(tiny):
    c = tiny["minicpm_layerwise"]
    per_layer = 2 * (10 * (4 * 32 * 32 + 3 * 32 * 80) + 2 * 32 * 55)
    assert pair_flops(Arch.from_config(c, LAYERWISE), 10) == 6 * per_layer + 2 * 32  # default: every layer
    two_exits = Arch.from_config(c, LAYERWISE, exits=((3, 1), (5, 3)))
    assert two_exits.layers_run == 5 and two_exits.exits == 2
    assert pair_flops(two_exits, 10) == 5 * per_layer + 2 * (2 * 32) == 1212928


def test_lightweight_flops_shrink_the_passage_after_a_compression_stage(tiny):
    c = tiny["gemma2_lightweight"]
    arch = Arch.from_config(c, LIGHTWEIGHT, exits=((4, 0),), compress_ratio=2, compress_layers=(2,))
    per_token = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64  # 4 query heads, 2 KV heads of 8 = 9216 MACs
    # 10 tokens = 3 query + 5 passage + 2 prompt; from layer 2 on the passage is ceil(5 / 2) = 3 tokens: 8 in all
    before = 2 * (10 * per_token + 2 * 32 * 55)
    after = 2 * (8 * per_token + 2 * 32 * 36)
    assert pair_flops(arch, 10, query_length=3, prompt_length=2) == 2 * before + 2 * after + 64 == 686912
    assert bench_flops.compressed_length(10, 3, 2, 2) == 8
    uncompressed = Arch.from_config(c, LIGHTWEIGHT, exits=((4, 0),))
    assert pair_flops(uncompressed, 10, 3, 2) == 4 * before + 64


def test_sliding_window_limits_the_even_layers_only():
    arch = Arch(encoder=False, hidden=8, intermediate=8, layers_run=2, heads=1, kv_heads=1, head_dim=8,
                sliding_window=4)
    assert arch.attended(0, 10) == 4 * 5 // 2 + 6 * 4  # 10 keys in the first window, then 4 per query
    assert arch.attended(1, 10) == 55
    assert arch.attended(0, 3) == 6


def test_total_flops_adds_pairs_and_rejects_impossible_spans(tiny):
    arch = Arch.from_config(tiny["xlm_roberta"], ENCODER)
    assert bench_flops.total_flops(arch, [10, 10, 4]) == 2 * pair_flops(arch, 10) + pair_flops(arch, 4)
    with pytest.raises(ValueError, match="exceed the sequence"):
        bench_flops.compressed_length(4, 3, 2, 2)


# --- percentiles -------------------------------------------------------------------------------------------------


def test_percentiles_interpolate_between_closest_ranks():
    samples = [float(v) for v in range(10, 0, -1)]  # unordered on purpose
    assert bench_stats.percentile(samples, 50) == pytest.approx(5.5)
    assert bench_stats.percentile(samples, 90) == pytest.approx(9.1)
    assert bench_stats.percentile(samples, 99) == pytest.approx(9.91)
    assert bench_stats.percentile(samples, 0) == 1.0 and bench_stats.percentile(samples, 100) == 10.0
    rng = np.random.default_rng(3)
    values = list(rng.lognormal(size=37))
    for q in (50, 90, 99):
        assert bench_stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    summary = bench_stats.latency_summary([0.2])
    assert summary["p50"] == summary["p99"] == 0.2 and summary["calls"] == 1


def test_percentile_rejects_no_samples_and_bad_q():
    with pytest.raises(ValueError, match="no samples"):
        bench_stats.percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        bench_stats.percentile([1.0], 101)


def test_spearman_averages_tied_ranks():
    assert bench_stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench_stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert list(bench_stats.ranks(np.array([5.0, 1.0, 5.0, 3.0]))) == [2.5, 0.0, 2.5, 1.0]
    assert bench_stats.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)


# --- the parity gate ---------------------------------------------------------------------------------------------


def test_gate_rejects_scores_beyond_the_fp32_tolerance():
    from bench_run import gate_for

    ref = np.linspace(-3, 3, 50)
    fp32 = gate_for("fp32", "cpu")
    assert bench_stats.parity_gate(ref + 5e-7, ref, fp32).passed
    bad = bench_stats.parity_gate(ref + np.where(np.arange(50) == 7, 1e-3, 0.0), ref, fp32)
    assert not bad.passed and bad.max_abs_diff == pytest.approx(1e-3) and "max abs diff" in bad.message


def test_gate_judges_int8_by_ranking_only():
    from bench_run import gate_for

    ref = np.linspace(-3, 3, 50)
    int8 = gate_for("int8", "cpu")
    assert bench_stats.parity_gate(ref * 1.1 + 0.3, ref, int8).passed  # far off, same order
    shuffled = bench_stats.parity_gate(np.random.default_rng(0).permutation(ref), ref, int8)
    assert not shuffled.passed and "Spearman" in shuffled.message


def test_gate_rejects_missing_and_non_finite_scores():
    gate = bench_stats.Gate(1e-5, 1e-5, 0.9999)
    assert "2 scores for 3 pairs" in bench_stats.parity_gate([1.0, 2.0], [1.0, 2.0, 3.0], gate).message
    assert "not finite" in bench_stats.parity_gate([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], gate).message


class _Scores:
    """A reranker stand-in that returns fixed scores, as compute_score_array does."""

    def __init__(self, scores: np.ndarray):
        self.scores = scores
        self.max_batch_tokens = None

    def compute_score_array(self, pairs, **call):
        return self.scores[: len(pairs)]


def test_a_contender_whose_scores_differ_is_recorded_and_never_timed():
    from bench_contenders import InProcess
    from bench_run import KindRun, Plan

    ref_scores = np.linspace(-1, 1, 20)
    pairs = [["q", f"p{i}"] for i in range(20)]
    reference = InProcess("reference", "fp32", _Scores(ref_scores), {})
    good = InProcess("ort-fp32", "fp32", _Scores(ref_scores + 1e-7), {})
    wrong = InProcess("wrong", "fp32", _Scores(ref_scores + 0.01), {})
    swapped = ref_scores.copy()
    swapped[[9, 10]] = swapped[[10, 9]]  # ranks 10 and 11 trade places: Spearman 0.9985, another top 10
    int8_ok = InProcess("ort-int8", "int8", _Scores(ref_scores * 2 + 1), {})
    int8_top = InProcess("int8-top", "int8", _Scores(swapped), {})
    contenders = {"ort-fp32": good, "wrong": wrong, "ort-int8": int8_ok, "int8-top": int8_top}
    for c in (reference, *contenders.values()):
        c.add_pairs("gate", pairs)
        c.add_pairs("latency", pairs)
    records = []
    plan = Plan(rounds=1, latency_calls=1, sweep_batches=(1,), sweep_lengths=(8,), sweep_repeats=1, gate_size=20)
    run = KindRun("k", contenders, reference, {}, plan, arch=None, stats={}, probe={}, provider="cpu",
                  emit=records.append)
    run.gate()
    by_name = {r["contender"]: r for r in records}
    assert by_name["ort-fp32"]["status"] == "ok" and by_name["ort-fp32"]["top10"]["same_order"]
    assert by_name["wrong"]["status"] == "parity-failed"
    assert by_name["wrong"]["gate"]["max_abs_diff"] == pytest.approx(0.01)
    assert by_name["ort-int8"]["status"] == "ok"  # ranking only: far off in value, same order
    assert by_name["int8-top"]["status"] == "parity-failed" and "top 10" in by_name["int8-top"]["message"]
    assert by_name["int8-top"]["gate"]["spearman"] > 0.99
    assert list(run.contenders) == ["ort-fp32", "ort-int8"]  # the failed ones are closed and never timed
    assert wrong.reranker is None and int8_top.reranker is None


# --- --device cuda on a machine without a GPU ----------------------------------------------------------------------


def _has_cuda_ep() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_cuda_ep(), reason="this machine has ONNX Runtime's CUDA provider: nothing to refuse")
def test_device_cuda_refuses_cleanly_without_a_gpu(capsys, tmp_path):
    import bench_rerank

    assert bench_rerank.main(["--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda refused" in err and "CUDAExecutionProvider" in err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_arguments_are_checked_before_the_device(capsys, tmp_path):
    import bench_rerank

    assert bench_rerank.main(["--device", "cuda", "--contenders", "ort-fp32", "--out", str(tmp_path / "x")]) == 2
    assert "unknown ['ort-fp32']" in capsys.readouterr().err
    assert bench_rerank.main(["--kinds", "bert", "--out", str(tmp_path / "x")]) == 2
    assert "known: xlm-roberta, gemma" in capsys.readouterr().err
    assert bench_rerank.main(["--sweep-batches", "0,8", "--out", str(tmp_path / "x")]) == 2
    assert "positive integers" in capsys.readouterr().err


# --- the report ------------------------------------------------------------------------------------------------


def _synthetic_run() -> list[dict]:
    env = {"run": "r", "type": "environment", "cpu": "Test CPU", "physical_cores": 2, "threads": 2, "commit": "abc",
           "dirty": False, "versions": {}, "load_average": [0.5, 0.5, 0.5], "time_utc": "2026-01-01T00:00:00",
           "settings": {"pairs": 10, "rounds": 1, "latency_passages": 4, "latency_calls": 2, "sweep_batches": [1],
                        "sweep_lengths": [8], "sweep_repeats": 1, "max_batch_tokens": None}}
    records = [env, {"run": "r", "type": "gemm-probe", "when": "start", "fp32_gflops": 100.0, "int8_gops": 400.0}]
    for name, pps, p50 in (("flagembedding", 5.0, 0.4), ("ort-fp32", 10.0, 0.1)):
        records += [
            {"run": "r", "type": "contender", "kind": "gemma", "contender": name, "status": "ok",
             "gate": {"max_abs_diff": 1e-7, "spearman": 1.0}},
            {"run": "r", "type": "throughput", "kind": "gemma", "contender": name, "pairs_per_s": pps,
             "useful_gflops": 7.0, "fed_tokens": 120, "real_tokens": 100, "parity_full_set": None},
            {"run": "r", "type": "latency", "kind": "gemma", "contender": name, "p50": p50, "p90": p50, "p99": p50},
        ]
    records.insert(2, {"run": "r", "type": "kind", "kind": "gemma"})
    records.append({"run": "r", "type": "contender", "kind": "gemma", "contender": "ort-int8",
                    "status": "parity-failed", "message": "Spearman 0.9 is below 0.99"})
    return records


def test_report_gives_ratios_to_flagembedding_and_lists_failures(tmp_path):
    import bench_report

    md, png = bench_report.write_report(_synthetic_run(), tmp_path / "bench")
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| gemma | ort-fp32 |"))
    assert "| 10.0 | 2.00x |" in row and "| 4.00x |" in row and "| 7% |" in row and "| 1.20 |" in row
    assert "gemma / ort-int8: parity-failed: Spearman 0.9 is below 0.99" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_judges_the_targets(tmp_path):
    import bench_report

    records = _synthetic_run()
    probe = next(r for r in records if r["type"] == "gemm-probe")
    records += [
        {"run": "r", "type": "kind", "kind": "xlm-roberta"},
        {"run": "r", "type": "contender", "kind": "xlm-roberta", "contender": "ort-int8", "status": "ok",
         "gate": {"max_abs_diff": 0.1, "spearman": 0.995}, "top10": {"same_set": False}},
    ]
    for name, pps, gflops in (("flagembedding", 4.0, 10.0), ("st-onnx", 9.0, 50.0), ("st-onnx-o2", 10.0, 55.0),
                              ("ort-fp32", 12.0, 70.0), ("ort-int8", 15.0, 80.0)):
        records.append({"run": "r", "type": "throughput", "kind": "xlm-roberta", "contender": name,
                        "pairs_per_s": pps, "useful_gflops": gflops, "parity_full_set": None})
    assert probe["fp32_gflops"] == 100.0
    text = "\n".join(bench_report.targets(records))
    assert "**missed**: 2.00x (gemma), 3.00x (xlm-roberta)" in text  # fp32 vs FlagEmbedding, bar 2.5x
    assert "met: 1.20x (xlm-roberta, best: st-onnx-o2)" in text  # the best ST export is the yardstick
    assert "**missed**: 7.00% (gemma), 70.00% (xlm-roberta)" in text  # useful GFLOP/s over the ORT MatMul probe
    assert "met: 3.75x (xlm-roberta)" in text and "met: 0.9950 (xlm-roberta); top 10: xlm-roberta **differs**" in text
    assert "**missed** for xlm-roberta/flagembedding" in text  # throughput timed but no latency p50
