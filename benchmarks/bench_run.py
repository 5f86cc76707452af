"""The timing loops of one kind: parity gate first, then throughput, latency and the (batch, length) sweep, with the
contenders alternated (rotated each round) so that machine drift and other load hit all of them alike."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from bench_contenders import Contender, ContenderError
from bench_flops import Arch, total_flops
from bench_setup import ENCODER_ONLY, TokenStats, token_stats
from bench_stats import Gate, latency_summary, median, parity_gate, top_k

Emit = Callable[[dict[str, Any]], None]
TOP_K = 10  # the int8 ranking bar: the reference's top 10 of the latency query's passages, as a set
SWEEP_EXCLUDED = {name: "sentence-transformers' predict takes no per-call max_length" for name in ENCODER_ONLY}


@dataclass(frozen=True)
class Plan:
    rounds: int
    latency_calls: int
    sweep_batches: tuple[int, ...]
    sweep_lengths: tuple[int, ...]
    sweep_repeats: int
    gate_size: int
    batch_size: int = 128  # FlagEmbedding's default, passed to every contender that takes it


def rotate(items: list[str], k: int) -> list[str]:
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]


def gate_for(precision: str, provider: str) -> Gate:
    from rerank_runtime.tolerances import tolerance

    tol = tolerance(precision, provider)
    return Gate(tol.atol, tol.rtol, tol.min_spearman)


class KindRun:
    """Runs every workload of one kind over the contenders that passed the gate."""

    def __init__(self, kind: str, contenders: dict[str, Contender], reference: Contender, call: dict[str, Any],
                 plan: Plan, arch: Arch, stats: dict[str, TokenStats], probe: dict[str, Any], provider: str,
                 emit: Emit) -> None:
        self.kind, self.contenders, self.reference = kind, contenders, reference
        self.call = {**call, "batch_size": plan.batch_size}
        self.plan, self.arch, self.stats, self.probe, self.provider, self.emit = plan, arch, stats, probe, provider, emit

    def record(self, kind: str, **fields: Any) -> None:
        self.emit({"type": kind, "kind": self.kind, **fields, "load_average": os.getloadavg()[0]})

    def drop(self, name: str, status: str, message: str, **fields: Any) -> None:
        self.record("contender", contender=name, status=status, message=message, **fields)
        self.contenders.pop(name).close()

    def tolerance_row(self, name: str) -> str:
        """The tolerance table's column for a contender: FlagEmbedding on the CPU has its own fp32 row (its decoder
        scores move with its batches' left padding, see rerank_runtime.tolerances); everything else, the provider's."""
        return "flagembedding" if name == "flagembedding" and self.provider == "cpu" else self.provider

    # --- parity gate --------------------------------------------------------------------------------------------

    def gate(self) -> None:
        """Score the gate set and the latency query's passages; a contender is timed only when its gate-set scores
        are within its tolerance row and, where that row judges ranking only (int8), it also puts the reference's
        top-10 passages of the latency query at its top (top-10 identity is recorded for every contender)."""
        _, expected = self.reference.score("gate", self.call)
        _, expected_top = self.reference.score("latency", self.call)
        for name in list(self.contenders):
            contender = self.contenders[name]
            try:
                seconds, got = contender.score("gate", self.call)  # also the warm-up
                _, got_top = contender.score("latency", self.call)  # and the latency workload's warm-up
            except ContenderError as exc:
                self.drop(name, "failed", str(exc))
                continue
            gate = gate_for(contender.precision, self.tolerance_row(name))
            result = parity_gate(got, expected, gate)
            top = top_k(got_top, expected_top, TOP_K)
            info = {"precision": contender.precision, "gate": result.to_dict(), "gate_rule": gate.__dict__,
                    "top10": top, "warmup_seconds": seconds, **getattr(contender, "info", {})}
            ranking_only = not math.isfinite(gate.atol)
            if not result.passed:
                self.drop(name, "parity-failed", f"scores differ from the reference: {result.message}", **info)
            elif ranking_only and not top["same_set"]:
                self.drop(name, "parity-failed", f"the top {TOP_K} of the {len(expected_top)}-passage query differ "
                                                 f"from the reference's ({result.message})", **info)
            else:
                self.record("contender", contender=name, status="ok", message=result.message, **info)

    # --- throughput ----------------------------------------------------------------------------------------------

    def throughput(self) -> None:
        names = list(self.contenders)
        times: dict[str, list[float]] = {n: [] for n in names}
        scores: dict[str, np.ndarray] = {}
        for r in range(self.plan.rounds):
            for name in rotate(names, r):
                seconds, got = self._timed(name, "throughput", self.call)
                if seconds is None:
                    continue
                times[name].append(seconds)
                scores.setdefault(name, got)
        stats = self.stats["throughput"]
        useful = total_flops(self.arch, stats.lengths, stats.query_lengths, stats.prompt_lengths)
        real = sum(stats.lengths)
        reference = scores.get("reference")
        for name, samples in times.items():
            if not samples or name not in self.contenders:
                continue
            seconds = median(samples)
            full = None
            if reference is not None:
                full = parity_gate(scores[name], reference, gate_for(self.contenders[name].precision,
                                                                     self.tolerance_row(name))).to_dict()
            self.record("throughput", contender=name, precision=self.contenders[name].precision,
                        pairs=len(stats.lengths), seconds=samples, median_seconds=seconds,
                        pairs_per_s=len(stats.lengths) / seconds, real_tokens=real,
                        fed_tokens=self._fed(name, stats), useful_flops=useful, useful_gflops=useful / seconds / 1e9,
                        efficiency_vs_kind_probe=useful / seconds / 1e9 / self.probe["fp32_gflops"],
                        parity_full_set=full)

    def _fed(self, name: str, stats: TokenStats) -> int | None:
        """Tokens (padding included) the contender's batching feeds its model, where we know its batching."""
        batch = self.plan.batch_size
        if name.startswith("flagembedding"):
            return stats.fed(batch, None, probe=True)
        if name.startswith(("ort-", "reference", "trt-")):
            info = getattr(self.contenders[name], "info", {})
            return stats.fed(batch, info.get("max_batch_tokens"))
        return None

    def _timed(self, name: str, pair_set: str, call: dict[str, Any]) -> tuple[float | None, np.ndarray]:
        try:
            return self.contenders[name].score(pair_set, call)
        except ContenderError as exc:
            self.drop(name, "failed", f"during {pair_set}: {exc}")
            return None, np.empty(0)

    # --- latency ---------------------------------------------------------------------------------------------

    def latency(self) -> None:
        samples: dict[str, list[float]] = {n: [] for n in self.contenders}
        for i in range(self.plan.latency_calls):
            for name in rotate(list(self.contenders), i):
                seconds, _ = self._timed(name, "latency", self.call)
                if seconds is not None:
                    samples[name].append(seconds)
        stats = self.stats["latency"]
        useful = total_flops(self.arch, stats.lengths, stats.query_lengths, stats.prompt_lengths)
        for name, values in samples.items():
            if values and name in self.contenders:
                summary = latency_summary(values)
                self.record("latency", contender=name, precision=self.contenders[name].precision,
                            passages=len(stats.lengths), samples=values, **summary,
                            useful_gflops=useful / summary["p50"] / 1e9)

    # --- sweep ---------------------------------------------------------------------------------------------------

    def sweep(self) -> None:
        names = [n for n in self.contenders if n not in SWEEP_EXCLUDED]
        for name in self.contenders:
            if name in SWEEP_EXCLUDED:
                self.record("sweep-skipped", contender=name, message=SWEEP_EXCLUDED[name])
        for batch in self.plan.sweep_batches:
            for length in self.plan.sweep_lengths:
                call = {**self.call, "batch_size": batch, "max_length": length, "max_batch_tokens": None}
                stats = self.stats[f"sweep_b{batch}_l{length}"]
                useful = total_flops(self.arch, stats.lengths, stats.query_lengths, stats.prompt_lengths)
                samples: dict[str, list[float]] = {n: [] for n in names}
                for r in range(self.plan.sweep_repeats):
                    for name in rotate([n for n in names if n in self.contenders], r):
                        seconds, _ = self._timed(name, f"sweep_b{batch}", call)
                        if seconds is not None:
                            samples[name].append(seconds)
                for name, values in samples.items():
                    if values and name in self.contenders:
                        seconds = median(values)
                        self.record("sweep", contender=name, precision=self.contenders[name].precision,
                                    batch=batch, max_length=length, tokens_per_pair=float(np.mean(stats.lengths)),
                                    samples=values, median_seconds=seconds, pairs_per_s=batch / seconds,
                                    useful_gflops=useful / seconds / 1e9)

    def profile(self, pairs: list[list[str]]) -> None:
        """An ONNX Runtime op profile of the runtime's first (longest) throughput batch, per ORT CPU contender."""
        from bench_profile import op_profile

        for name in ("ort-fp32", "ort-int8"):
            contender = self.contenders.get(name)
            if contender is not None and self.provider == "cpu":
                result = op_profile(getattr(contender, "reranker"), pairs, self.call, self.probe["threads"])
                self.record("profile", contender=name, precision=contender.precision, **result)

    def run(self, profile_pairs: list[list[str]] | None = None) -> None:
        start = time.perf_counter()
        self.gate()
        if profile_pairs:
            self.profile(profile_pairs)
        self.throughput()
        self.latency()
        self.sweep()
        self.record("kind-done", seconds=time.perf_counter() - start, contenders=list(self.contenders))


def sweep_stats(reference: Any, sets: dict[str, list[list[str]]], call: dict[str, Any],
                batches: tuple[int, ...], lengths: tuple[int, ...]) -> dict[str, TokenStats]:
    out = {}
    for batch in batches:
        for length in lengths:
            out[f"sweep_b{batch}_l{length}"] = token_stats(reference, sets[f"sweep_b{batch}"],
                                                           {**call, "max_length": length})[0]
    return out
