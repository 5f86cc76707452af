"""The public classes end to end over a fake numpy front (spec.Front): kinds mapping, input errors, return contract,
batching.

The fake's score is a deterministic function of each row's real ids (after applying any compression plan), so
sorting, padding side, order restoration, chunking, token budgets and concurrency are all checked exactly. Every
instance is built with the public from_loaded.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
from char_tokenizer import NL, VOCAB, char_tokenizer, t
from compression_twin import apply_plan, plan_mask

from rerank_runtime.errors import UnsupportedRequestError
from rerank_runtime.kinds import AUTO_RERANKER_MAPPING, KINDS, auto_lookup_key, build_request
from rerank_runtime.rerankers import (
    FlagAutoReranker,
    FlagLLMReranker,
    FlagReranker,
    LayerWiseFlagLLMReranker,
    LightWeightFlagLLMReranker,
)
from rerank_runtime.spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT, GraphRequest, Loaded, ModelSpec



SPECS = {
    ENCODER: ModelSpec(ENCODER, pad_token_id=1, pair_prefix=(0,), pair_middle=(2, 2), pair_suffix=(2,)),
    DECODER: ModelSpec(DECODER, pad_token_id=1, padding_side="left", bos_token_id=0),
    LAYERWISE: ModelSpec(LAYERWISE, pad_token_id=1, padding_side="left", bos_token_id=0, num_layers=6, start_layer=2),
    LIGHTWEIGHT: ModelSpec(LIGHTWEIGHT, pad_token_id=1, padding_side="left", bos_token_id=0, num_layers=6,
                           start_layer=2),
}
CLASSES = {ENCODER: FlagReranker, DECODER: FlagLLMReranker, LAYERWISE: LayerWiseFlagLLMReranker,
           LIGHTWEIGHT: LightWeightFlagLLMReranker}


def row_score(values: list[float], layer: int = 0, head: int = 0) -> float:
    """The fake graph: position-weighted sum of the real tokens' values, tagged by exit."""
    return float(np.float32(sum((j + 1) * v for j, v in enumerate(values)) + 1000 * layer + 100 * head))


class FakeBackend:
    """A spec.Front whose scores are row_score of each row's real ids. meet=N: the first N runs wait for each other
    (a barrier, bounded by a hang guard), so they are provably in flight together."""

    def __init__(self, concurrency: int = 1, meet: int = 0) -> None:
        self.concurrency = concurrency
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.feeds: list[dict[str, np.ndarray]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.barrier = threading.Barrier(meet, timeout=30) if meet else None

    def check(self, request: GraphRequest) -> None:
        with self.lock:
            self.events.append("check")

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            self.events.append("run")
            self.feeds.append(feeds)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            waits = self.barrier is not None and len(self.feeds) <= self.barrier.parties
        try:
            if waits:
                self.barrier.wait()  # BrokenBarrierError if fewer runs are ever in flight together
            return self._scores(request, feeds)
        finally:
            with self.lock:
                self.inflight -= 1

    def _scores(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
        outs = []
        for layer, head in request.exits or ((0, 0),):
            h, m = ids.astype(np.float64)[..., None], mask
            for k, stage in enumerate(request.compress_layers):
                if stage < layer:
                    w = feeds[f"compress_weight_{k}"]
                    h, m = apply_plan(h, feeds[f"compress_index_{k}"], w.astype(np.float64)), plan_mask(w)
            outs.append(np.array([row_score(list(h[b, m[b] == 1, 0]), layer, head) for b in range(len(ids))],
                                 dtype=np.float32))
        return outs


def bundle(model_class: str, backend: FakeBackend | None = None, defaults: dict[str, Any] | None = None,
           spec: ModelSpec | None = None) -> Loaded:
    return Loaded(spec or SPECS[model_class], char_tokenizer(), backend or FakeBackend(), defaults or {})


def make(model_class: str, backend: FakeBackend | None = None, defaults: dict[str, Any] | None = None,
         spec: ModelSpec | None = None, **kwargs: Any) -> Any:
    return CLASSES[model_class].from_loaded(bundle(model_class, backend, defaults, spec), "tiny", **kwargs)


def enc_ids(q: str, p: str) -> list[int]:
    return [0] + t(q) + [2, 2] + t(p) + [2]


PAIRS = [("what is " + "x" * (i % 7), "passage " + "y" * ((i * 5) % 11)) for i in range(23)]
EXPECTED = [row_score([float(v) for v in enc_ids(q, p)]) for q, p in PAIRS]

# ---------------------------------------------------------------- kinds mapping


@pytest.mark.parametrize(
    ("cutoff", "exits"),
    [(None, ((6, 4),)), (4, ((4, 2),)), ([6, 2], ((2, 4), (6, 0))), ([3, 3, 5], ((3, 1), (5, 1))), ([4, 4], ((4, 2),))],
)
def test_layerwise_exits_follow_flagembeddings_pairing(cutoff: Any, exits: tuple[tuple[int, int], ...]) -> None:
    assert build_request(KINDS[LAYERWISE], SPECS[LAYERWISE], cutoff_layers=cutoff).exits == exits


@pytest.mark.parametrize(
    ("cutoff", "exits"),
    [(None, ((6, 0),)), ([4], ((4, 0),)), ([6, 4], ((4, 0), (6, 1))), ([3, 5, 6], ((3, 0), (5, 1), (6, 2)))],
)
def test_lightweight_heads_go_by_position(cutoff: Any, exits: tuple[tuple[int, int], ...]) -> None:
    assert build_request(KINDS[LIGHTWEIGHT], SPECS[LIGHTWEIGHT], cutoff_layers=cutoff).exits == exits


@pytest.mark.parametrize("kind", [LAYERWISE, LIGHTWEIGHT])
@pytest.mark.parametrize("cutoff", [[1], [7], [], [1, 4]])
def test_out_of_range_cutoffs_raise(kind: str, cutoff: list[int]) -> None:
    with pytest.raises(ValueError, match=r"\[2, 6\]"):
        build_request(KINDS[kind], SPECS[kind], cutoff_layers=cutoff)


def test_lightweight_layer_sep_and_cutoff_types() -> None:
    spec = ModelSpec(LIGHTWEIGHT, pad_token_id=1, bos_token_id=0, num_layers=6, start_layer=2, layer_sep=2)
    assert build_request(KINDS[LIGHTWEIGHT], spec, cutoff_layers=[4, 6]).exits == ((4, 0), (6, 1))
    with pytest.raises(ValueError, match="steps of 2"):
        build_request(KINDS[LIGHTWEIGHT], spec, cutoff_layers=[3])
    for bad in (True, "4", [4.0]):
        with pytest.raises(TypeError, match="cutoff_layers"):
            build_request(KINDS[LAYERWISE], SPECS[LAYERWISE], cutoff_layers=bad)


@pytest.mark.parametrize(
    ("cutoff", "ratio", "layers", "want"),
    [
        (None, 2, [8], (1, ())),  # the default [8] never runs on a 6-layer model
        ([4], 2, [3, 5], (2, (3,))),  # a stage at or past the deepest exit is never reached
        (None, 3, [0, 2, 2, 5, 7], (3, (2, 5))),  # 0 is ignored, duplicates collapse
        ([6], 1, [3], (1, ())),
        ([6], 2, 3, (2, (3,))),
    ],
)
def test_compression_stages(cutoff: Any, ratio: int, layers: Any, want: tuple[int, tuple[int, ...]]) -> None:
    request = build_request(KINDS[LIGHTWEIGHT], SPECS[LIGHTWEIGHT], cutoff_layers=cutoff, compress_ratio=ratio,
                            compress_layers=layers)
    assert (request.compress_ratio, request.compress_layers) == want


def test_bad_compression_arguments() -> None:
    for ratio, err in ((0, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="compress_ratio"):
            build_request(KINDS[LIGHTWEIGHT], SPECS[LIGHTWEIGHT], compress_ratio=ratio)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="compress_layers"):
        build_request(KINDS[LIGHTWEIGHT], SPECS[LIGHTWEIGHT], compress_ratio=2, compress_layers="8")  # type: ignore


def test_single_score_kinds_have_no_exits() -> None:
    for kind in (ENCODER, DECODER):
        assert build_request(KINDS[kind], SPECS[kind]).output_names == ("score",)


def test_auto_mapping() -> None:
    assert auto_lookup_key("/models/bge-reranker-v2-m3") == "bge-reranker-v2-m3"
    assert auto_lookup_key("/runs/bge-reranker-v2-gemma/checkpoint-500") == "bge-reranker-v2-gemma"
    assert AUTO_RERANKER_MAPPING[auto_lookup_key("x/bge-reranker-v2.5-gemma2-lightweight")][0] == LIGHTWEIGHT
    assert AUTO_RERANKER_MAPPING[auto_lookup_key("BAAI/bge-reranker-v2-minicpm-layerwise")][0] == LAYERWISE
    assert auto_lookup_key("my-reranker") not in AUTO_RERANKER_MAPPING


def test_auto_reranker_factory() -> None:
    layerwise = FlagAutoReranker.from_finetuned("tiny", model_class="decoder-only-layerwise", loaded=bundle(LAYERWISE))
    assert type(layerwise) is LayerWiseFlagLLMReranker
    assert type(FlagAutoReranker.from_loaded(bundle(DECODER), batch_size=4)) is FlagLLMReranker  # the spec's class
    with pytest.raises(UnsupportedRequestError, match="decoder-only-base"):  # a class that cannot score the bundle
        FlagAutoReranker.from_finetuned("tiny", model_class=ENCODER, loaded=bundle(DECODER))
    with pytest.raises(ValueError, match="encoder-only-base"):
        FlagAutoReranker.from_finetuned("tiny", model_class="encoder")
    with pytest.raises(EnvironmentError):
        FlagAutoReranker()


# ---------------------------------------------------------------- arguments and input errors


@pytest.mark.parametrize(
    ("pairs", "err", "match"),
    [
        (None, TypeError, "sentence_pairs must be"),
        ("query", TypeError, "sentence_pairs must be"),
        (5, TypeError, "sentence_pairs must be"),
        ([("q", "p"), None], TypeError, r"sentence_pairs\[1\]"),
        ([("q",)], ValueError, r"sentence_pairs\[0\] must hold exactly two"),
        ([["q", "p"], ["a", "b", "c"]], ValueError, r"sentence_pairs\[1\].*got 3"),
        (["q", "p", "x"], ValueError, "exactly two str"),
        ([("q", 3)], TypeError, r"sentence_pairs\[0\]\[1\] \(the passage\)"),
        (["q", 5], TypeError, r"sentence_pairs\[1\] \(the passage\)"),
        ([(None, "p")], TypeError, r"sentence_pairs\[0\]\[0\] \(the query\)"),
    ],
)
def test_input_errors(pairs: Any, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        make(ENCODER).compute_score(pairs)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"batch_size": "8"}, TypeError, "batch_size"),
        ({"query_max_length": 0}, ValueError, "query_max_length"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"max_batch_tokens": 0}, ValueError, "max_batch_tokens"),
        ({"normalize": "yes"}, TypeError, "normalize"),
        ({"passage_max_length": 0}, ValueError, "passage_max_length"),
        ({"reranker_batch_size": 0}, ValueError, "reranker_batch_size"),
        ({"reranker_batch_size": 8, "batch_size": 16}, ValueError, "disagree"),
        ({"passage_max_lenght": 512}, TypeError, "unexpected keyword"),
        ({"use_bf16": True}, TypeError, "only FlagLLMReranker"),
        ({"cutoff_layers": [4]}, TypeError, "LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker"),
        ({"foo": 1}, TypeError, r"accepted: \[.*'max_length'"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        make(ENCODER, **kwargs)


def test_flagembedding_workflow_arguments_are_accepted(recwarn: pytest.WarningsChecker) -> None:
    """passage_max_length is stored and changes nothing (FlagEmbedding 1.4.2 never reads it); reranker_batch_size is
    the batch size (FlagEmbedding's evaluation name for it)."""
    backend = FakeBackend()
    pairs = [("q", "p" * n) for n in range(1, 8)]
    plain = make(ENCODER, backend=backend, max_length=6).compute_score(pairs)
    sized = make(ENCODER, backend=backend, max_length=6, passage_max_length=512, reranker_batch_size=3)
    assert not recwarn.list  # the default value: nothing to say
    assert sized.passage_max_length == 512 and sized.batch_size == 3
    backend.feeds.clear()
    assert sized.compute_score(pairs) == plain
    assert [len(f["input_ids"]) for f in backend.feeds] == [3, 3, 1]
    with pytest.warns(UserWarning, match=r"passage_max_length=77 has no effect.*max_length \(now 6\)"):
        other = make(ENCODER, backend=backend, max_length=6, passage_max_length=77)
    assert other.compute_score(pairs) == plain  # passages are still cut at max_length
    make(ENCODER, passage_max_length=77)  # warned once per value
    assert not [w for w in recwarn.list if "passage_max_length" in str(w.message)]


def test_peft_path_and_class_mismatch_and_bad_instance_cutoff() -> None:
    with pytest.raises(ValueError, match="merge"):
        make(DECODER, peft_path="/lora")
    with pytest.raises(UnsupportedRequestError, match="decoder-only-base"):
        make(ENCODER, spec=SPECS[DECODER])
    with pytest.raises(ValueError, match=r"\[2, 6\]"):
        make(LAYERWISE, cutoff_layers=[9])


def test_call_arguments_a_class_does_not_take() -> None:
    with pytest.raises(TypeError, match="LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker"):
        make(DECODER).compute_score([("q", "p")], cutoff_layers=[4])
    with pytest.raises(TypeError, match="prompt"):
        make(ENCODER).compute_score([("q", "p")], prompt="x")
    with pytest.raises(TypeError, match="LightWeightFlagLLMReranker"):
        make(LAYERWISE).compute_score([("q", "p")], compress_layer=[3])
    with pytest.raises(ValueError, match="batch_size"):
        make(ENCODER).compute_score([("q", "p")], batch_size=0)


# ---------------------------------------------------------------- return contract


def test_return_shapes_single_exit() -> None:
    r = make(ENCODER)
    single = r.compute_score(("ab", "cd"))
    assert isinstance(single, float) and single == row_score([float(v) for v in enc_ids("ab", "cd")])
    assert r.compute_score(["ab", "cd"]) == single
    many = r.compute_score(PAIRS)
    assert isinstance(many, list) and all(isinstance(x, float) for x in many) and many == EXPECTED
    assert r.compute_score([]) == []
    arr = r.compute_score_array(PAIRS)
    assert arr.dtype == np.float64 and arr.shape == (23,) and arr.tolist() == EXPECTED
    assert r.compute_score_array(("ab", "cd")).shape == (1,)
    assert r.compute_score_array([]).shape == (0,)


def test_return_shapes_several_exits() -> None:
    r = make(LAYERWISE, cutoff_layers=[6, 2])
    prompt = t(KINDS[LAYERWISE].default_prompt or "")
    layout = [[0] + t("A: " + q) + NL + t("B: " + p) + NL + prompt for q, p in PAIRS[:3]]
    base = [row_score([float(v) for v in ids]) for ids in layout]
    got = r.compute_score(PAIRS[:3])
    assert got == [[b + 2000 + 400 for b in base], [b + 6000 + 0 for b in base]]  # [6, 2]: layer 2 x head 4 ...
    assert r.compute_score(PAIRS[0]) == [got[0][0], got[1][0]]
    assert r.compute_score_array(PAIRS[:3]).shape == (2, 3)
    assert r.compute_score(PAIRS[:3], cutoff_layers=4) == [b + 4000 + 200 for b in base]
    assert r.compute_score([]) == []


def test_normalize_is_float64_sigmoid_of_the_raw_float32() -> None:
    r = make(ENCODER, max_length=6)
    pairs = [("a", "b"), ("", ""), ("ab", "c")]
    raw = r.compute_score(pairs)
    assert all(float(np.float32(x)) == x for x in raw)
    normed = r.compute_score(pairs, normalize=True)
    assert normed == [1 / (1 + math.exp(-x)) for x in raw]
    assert make(ENCODER, normalize=True).compute_score(("a", "b")) == normed[0]


def test_check_runs_once_per_call_before_any_batch() -> None:
    backend = FakeBackend()
    r = make(ENCODER, backend, batch_size=5)
    backend.events.clear()
    r.compute_score(PAIRS)
    assert backend.events == ["check"] + ["run"] * 5
    backend.events.clear()
    r.compute_score([])
    assert backend.events == ["check"]


def test_model_defaults_fill_unset_arguments() -> None:
    r = make(LAYERWISE, defaults={"cutoff_layers": [4]})
    assert r.cutoff_layers == [4]
    assert r.compute_score(("q", "p")) == r.compute_score(("q", "p"), cutoff_layers=[4])
    lw = make(LIGHTWEIGHT, defaults={"compress_ratio": 2, "compress_layers": [3]})
    assert (lw.compress_ratio, lw.compress_layers) == (2, [3])
    assert make(LIGHTWEIGHT).compress_layers == [8] and make(LIGHTWEIGHT).compress_ratio == 1


# ---------------------------------------------------------------- batching end to end


def test_sorting_batching_and_order_restoration() -> None:
    backend = FakeBackend()
    assert make(ENCODER, backend, batch_size=4).compute_score(PAIRS) == EXPECTED
    widths = [f["input_ids"].shape[1] for f in backend.feeds]
    assert widths == sorted(widths, reverse=True)  # longest first
    for feeds in backend.feeds:  # encoder: right padding to the longest row, no multiple
        mask = feeds["attention_mask"]
        assert mask[:, 0].all() and mask[:, -1].any() and (feeds["input_ids"][mask == 0] == 1).all()


def test_chunking_keeps_scores_and_batches_within_chunks() -> None:
    backend = FakeBackend()
    assert make(ENCODER, backend, batch_size=4, chunk_size=5).compute_score(PAIRS) == EXPECTED
    assert [len(f["input_ids"]) for f in backend.feeds] == [4, 1] * 4 + [3]


def test_token_budget() -> None:
    backend = FakeBackend()
    assert make(ENCODER, backend, batch_size=16, max_batch_tokens=90).compute_score(PAIRS) == EXPECTED
    shapes = [f["input_ids"].shape for f in backend.feeds]
    assert all(b * s <= 90 or b == 1 for b, s in shapes) and len(shapes) > 2


def test_concurrency_keeps_batches_in_flight() -> None:
    backend = FakeBackend(concurrency=3, meet=3)  # the first three batches run only once all three are in flight
    assert make(ENCODER, backend, batch_size=2).compute_score(PAIRS) == EXPECTED
    assert backend.max_inflight == 3  # never more than the front's concurrency


def test_concurrent_calls_from_threads() -> None:
    r = make(DECODER, FakeBackend(), batch_size=3)
    serial = {m: r.compute_score(PAIRS, max_length=m) for m in (4, 9, 30)}
    results: dict[int, Any] = {}

    def work(m: int) -> None:
        for _ in range(5):
            assert r.compute_score(PAIRS, max_length=m) == serial[m]
        results[m] = True

    threads = [threading.Thread(target=work, args=(m,)) for m in serial]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == {4: True, 9: True, 30: True}
    assert len({tuple(v) for v in serial.values()}) == 3


@pytest.mark.parametrize(("kind", "side"), [(DECODER, "left"), (LAYERWISE, "left"), (LIGHTWEIGHT, "right")])
def test_decoder_padding_side_and_multiple(kind: str, side: str) -> None:
    backend = FakeBackend()
    make(kind, backend, batch_size=5).compute_score(PAIRS)
    for feeds in backend.feeds:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        assert ids.shape[1] % 8 == 0 and (ids[mask == 0] == 1).all()
        assert (mask[:, -1] if side == "left" else mask[:, 0]).all()


def compress_row(values: list[float], ql: int, pl: int, r: int) -> list[float]:
    p = len(values) - ql - pl
    groups = [values[ql + g : ql + min(g + r, p)] for g in range(0, p, r)]
    return values[:ql] + [sum(g) / len(g) for g in groups] + values[ql + p :]


def test_lightweight_compression_end_to_end() -> None:
    prompt = "ok?"
    r = make(LIGHTWEIGHT, FakeBackend(), batch_size=4, cutoff_layers=[3, 6], compress_ratio=3,
             compress_layers=[2, 4], prompt=prompt, max_length=40)
    got = r.compute_score(PAIRS[:9])
    for i, (q, p) in enumerate(PAIRS[:9]):
        query = [0] + t("A: " + q) + NL  # max_length 40: nothing is truncated
        passage = t("B: " + p)
        values = [float(v) for v in query + passage + NL + t(prompt)]
        once = compress_row(values, len(query), 1 + len(prompt), 3)  # stage before layer 2: seen by the layer-3 exit
        twice = compress_row(once, len(query), 1 + len(prompt), 3)  # and before layer 4: seen by the layer-6 exit
        assert got[0][i] == pytest.approx(row_score(once, 3, 0), rel=1e-6)
        assert got[1][i] == pytest.approx(row_score(twice, 6, 1), rel=1e-6)


def test_compress_layer_is_a_deprecated_override() -> None:
    r = make(LIGHTWEIGHT, compress_ratio=2, compress_layers=[8])
    plain = r.compute_score(PAIRS[:4], cutoff_layers=[6])
    with pytest.warns(DeprecationWarning, match="compress_layers"):
        compressed = r.compute_score(PAIRS[:4], cutoff_layers=[6], compress_layer=[3])
    assert compressed == r.compute_score(PAIRS[:4], cutoff_layers=[6], compress_layers=[3]) != plain


# ---------------------------------------------------------------- non-finite scores and from_loaded


class PoisonBackend(FakeBackend):
    """The fake graph, except that rows containing 'n' score NaN and rows containing 'i' score +inf."""

    def _scores(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = super()._scores(request, feeds)
        ids = feeds["input_ids"] * feeds["attention_mask"]
        nan, inf = (ids == VOCAB["n"]).any(axis=1), (ids == VOCAB["i"]).any(axis=1)
        return [np.where(nan, np.float32(np.nan), np.where(inf, np.float32(np.inf), o)) for o in outs]


POISON_PAIRS = [("q", "aa"), ("q", "bbb"), ("q", "nn"), ("q", "c"), ("q", "iiiiiiiiii")]


def poisoned(**kwargs: Any) -> Any:
    loaded = Loaded(SPECS[ENCODER], char_tokenizer(), PoisonBackend(), {})
    return FlagReranker.from_loaded(loaded, batch_size=2, **kwargs)


@pytest.mark.parametrize("normalize", [False, True])
def test_non_finite_score_raises_naming_the_pair_in_input_order(normalize: bool) -> None:
    from rerank_runtime.errors import NonFiniteScoreError

    reranker = poisoned(normalize=normalize)
    with pytest.raises(NonFiniteScoreError, match=r"sentence_pairs\[2\] as nan.*'score'") as info:
        reranker.compute_score(POISON_PAIRS)  # longest first: pair 4 (inf) runs first, but the index is the input's
    assert (info.value.index, info.value.output) == (2, "score") and math.isnan(info.value.value)
    with pytest.raises(NonFiniteScoreError, match=r"sentence_pairs\[1\] as inf") as info:
        reranker.compute_score([POISON_PAIRS[0], POISON_PAIRS[4]])
    assert info.value.index == 1 and info.value.value == math.inf


def test_non_finite_nan_opt_in_returns_nan_never_inf_or_one() -> None:
    clean = [row_score([float(v) for v in enc_ids(q, p)]) for q, p in POISON_PAIRS]
    for reranker, call in ((poisoned(non_finite="nan"), {}), (poisoned(), {"non_finite": "nan"})):
        raw = reranker.compute_score(POISON_PAIRS, **call)
        normed = reranker.compute_score(POISON_PAIRS, normalize=True, **call)
        assert [math.isnan(x) for x in raw] == [math.isnan(x) for x in normed] == [False, False, True, False, True]
        assert [raw[i] for i in (0, 1, 3)] == [clean[i] for i in (0, 1, 3)]
        assert all(0.0 <= normed[i] <= 1.0 for i in (0, 1, 3))


def test_non_finite_policy_is_checked_in_constructor_and_call() -> None:
    with pytest.raises(ValueError, match=r"non_finite must be one of \['raise', 'nan'\], got 'ignore'"):
        poisoned(non_finite="ignore")
    with pytest.raises(ValueError, match="non_finite must be one of"):
        poisoned().compute_score(POISON_PAIRS[:2], non_finite="zero")


def test_token_lengths_count_the_ids_compute_score_feeds() -> None:
    backend = FakeBackend()
    r = make(DECODER, backend, max_length=6, batch_size=100)
    r.compute_score(PAIRS)
    fed = sorted(int(mask.sum()) for feeds in backend.feeds for mask in feeds["attention_mask"])
    cut = r.token_lengths(PAIRS)
    assert cut.dtype == np.int64 and sorted(cut) == fed
    full = r.token_lengths(PAIRS, truncate=False)  # nothing cut: what max_length=6 cuts shows as longer
    assert (full >= cut).all() and (full > cut).any()
    assert (r.token_lengths(PAIRS, max_length=200, query_max_length=200) == full).all()
    assert (r.token_lengths(PAIRS, prompt="Yes?") < r.token_lengths(PAIRS)).all()  # the prompt is counted
    with pytest.raises(TypeError, match="prompt"):
        make(ENCODER).token_lengths(PAIRS, prompt="x")


def test_from_loaded_is_the_public_constructor_over_a_bundle() -> None:
    backend = FakeBackend()
    loaded = Loaded(SPECS[DECODER], char_tokenizer(), backend, {})
    reranker = FlagAutoReranker.from_loaded(loaded, batch_size=3)
    assert type(reranker) is FlagLLMReranker and reranker.batch_size == 3 and reranker.front is backend
    assert reranker.compute_score(PAIRS[:4]) == make(DECODER, batch_size=3).compute_score(PAIRS[:4])
    with pytest.raises(TypeError, match="Loaded bundle"):
        FlagReranker.from_loaded(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        FlagReranker.from_loaded(Loaded(SPECS[ENCODER], char_tokenizer(), FakeBackend(), {}), colour="red")
