"""Limits: sequence lengths against the model's positions and the export's max_length, text that is not valid
Unicode, and constructor arguments the artifact cannot serve. Each is refused early with a typed error.

The defects: max_length=10**9 on an encoder gave ONNX Runtime's raw error (position 514) and on decoders memory grew
until the machine ran out; a lone surrogate failed with the tokenizer's raw TypeError, without a pair index and after
earlier chunks were scored; a bad compress_ratio / cutoff_layers was accepted by the constructor and failed only at
the first call.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from rerank_export.reference import FlagReranker as ReferenceEncoder
from rerank_runtime import (FlagLLMReranker, FlagReranker, LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker,
                            UnsupportedRequestError)
from rerank_runtime.artifact import load_artifact
from rerank_runtime.front import FeedRecorder
from rerank_runtime.errors import InvalidTextError, LengthLimitError

PAIRS = [["what is panda?", "The giant panda is a bear species endemic to China."], ["hi", "hello"]]


def test_an_encoder_max_length_beyond_the_positions_is_refused_in_the_constructor(exported):
    with pytest.raises(LengthLimitError) as err:
        FlagReranker(str(exported("xlm_roberta")), max_length=10**9)
    message = str(err.value)
    assert "max_length=1000000000" in message and "max_length 512" in message  # the export's limit
    assert "position table serves 512 tokens" in message  # 514 positions minus XLM-R's padding offset of 2


def test_a_call_beyond_the_limits_is_refused_before_anything_runs(exported):
    loaded = load_artifact(exported("gemma"))
    recorder = FeedRecorder(loaded.front)
    reranker = FlagLLMReranker.from_loaded(replace(loaded, front=recorder))
    with pytest.raises(LengthLimitError, match=r"max_length=6000 .*this export was sized and verified for max_length "
                                               r"512 .*position table serves 8192 tokens"):
        reranker.compute_score(PAIRS, max_length=6000)
    with pytest.raises(LengthLimitError, match=r"query_max_length=600 "):
        reranker.compute_score(PAIRS, query_max_length=600)
    assert recorder.calls == []
    assert len(reranker.compute_score(PAIRS, max_length=512)) == 2 and len(recorder.calls) == 1


def test_a_row_beyond_the_positions_names_the_pair(checkpoint):
    """A query that leaves no room for the passage (query_max_length 510 of max_length 512, plus 4 special tokens)
    is left untruncated, as Hugging Face does: such a row is longer than the position table."""
    reference = ReferenceEncoder(str(checkpoint("xlm_roberta")), batch_size=4)
    pairs = PAIRS + [["word " * 700, "passage"]]
    with pytest.raises(LengthLimitError, match=r"sentence_pairs\[2\] makes a sequence of \d+ tokens, more than the 512 "
                                               r"the model's position table serves"):
        reference.compute_score(pairs, max_length=512, query_max_length=510)


def test_the_reference_is_bounded_by_the_positions(checkpoint):
    with pytest.raises(LengthLimitError, match=r"max_length=100000 .*position table serves 512 tokens"):
        ReferenceEncoder(str(checkpoint("xlm_roberta")), max_length=100_000)


def test_a_lone_surrogate_is_refused_with_its_pair_index_before_any_chunk_is_scored(exported):
    loaded = load_artifact(exported("xlm_roberta"))
    recorder = FeedRecorder(loaded.front)
    reranker = FlagReranker.from_loaded(replace(loaded, front=recorder), chunk_size=2, batch_size=2)
    pairs = PAIRS * 3 + [["fine", "broken \ud800 text"]]
    with pytest.raises(InvalidTextError, match=r"sentence_pairs\[6\]\[1\] \(the passage\) holds a lone surrogate "
                                               r"'\\ud800' at character 7") as err:
        reranker.compute_score(pairs)
    assert err.value.index == 6 and recorder.calls == []
    with pytest.raises(InvalidTextError, match=r"sentence_pairs\[0\] \(the query\)"):
        reranker.compute_score(["\udfff", "x"])


def test_compression_the_artifact_lacks_is_refused_in_the_constructor(exported):
    path = str(exported("gemma2_lightweight"))  # exported with compress_ratio 2, compress_layers [2, 4]
    with pytest.raises(UnsupportedRequestError, match=r"exported with compress_ratio=2, compress_layers=\[2, 4\]"):
        LightWeightFlagLLMReranker(path, compress_ratio=3)
    with pytest.raises(UnsupportedRequestError, match=r"exported with compress_ratio=2"):
        LightWeightFlagLLMReranker(path, compress_layers=[3])
    with pytest.raises(ValueError, match="compress_ratio must be an int >= 1"):
        LightWeightFlagLLMReranker(path, compress_ratio=0)


def test_cutoff_layers_the_artifact_lacks_are_refused_in_the_constructor(exported):
    short = str(exported("minicpm_layerwise", cutoff_layers=(3,)))  # heads for layers 2 and 3 only
    with pytest.raises(UnsupportedRequestError, match=r"layer 6"):
        LayerWiseFlagLLMReranker(short, cutoff_layers=[6])
    with pytest.raises(ValueError, match=r"cutoff_layers must be values in \[2, 6\]"):
        LayerWiseFlagLLMReranker(short, cutoff_layers=[9])
