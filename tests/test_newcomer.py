"""What a FlagEmbedding user meets first on the runtime: the defaults an export cannot honour (max_length,
use_fp16 / use_bf16) said once, the progress bar of long calls, and messages that name the class, the export or the
command to use. Run over the hand-built tiny export (tests/tiny_export.py: onnx.helper, no torch)."""

from __future__ import annotations

import io
import re
import sys
import warnings
from pathlib import Path

import pytest

from rerank_runtime import (FlagAutoReranker, FlagLLMReranker, FlagReranker, LengthLimitError,
                            LightWeightFlagLLMReranker, ModelNotFoundError, UnsupportedRequestError)
from rerank_runtime.progress import Bar
from rerank_runtime.spec import LIGHTWEIGHT
from tiny_export import tiny_export

PAIRS = [["hello", "world"], ["world", "hello hello"], ["hello", ""]] * 4  # 12 pairs


def load_quietly(cls: type, path: Path, **kwargs) -> tuple[object, list[str]]:
    """(the reranker, the warnings its constructor gave)."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        reranker = cls(str(path), **kwargs)
    return reranker, [str(w.message) for w in got]


# ------------------------------------------------------------------ max_length: the export's when it is smaller


def test_an_export_below_512_serves_its_own_max_length_by_default(tmp_path: Path) -> None:
    tiny_export(tmp_path)  # made with max_length 16
    reranker, said = load_quietly(FlagReranker, tmp_path)
    assert reranker.max_length == 16  # type: ignore[attr-defined]
    assert len(said) == 1 and said[0].startswith(f"max_length defaults to 16 for {tmp_path}: it was exported with "
                                                 "--max-length 16, below FlagEmbedding's default 512")
    assert "pass max_length=16 to say so" in said[0]
    explicit, said = load_quietly(FlagReranker, tmp_path, max_length=16)
    assert said == [] and explicit.compute_score(PAIRS) == reranker.compute_score(PAIRS)  # type: ignore[attr-defined]
    with pytest.raises(LengthLimitError, match=r"max_length=17 is more than this model serves: this export was sized "
                                               r"and verified for max_length 16"):
        FlagReranker(str(tmp_path), max_length=17)


def test_an_export_of_512_or_more_keeps_flagembeddings_default(tmp_path: Path) -> None:
    tiny_export(tmp_path, max_length=600, max_sequence_length=600)
    reranker, said = load_quietly(FlagReranker, tmp_path)
    assert reranker.max_length == 512 and said == []  # type: ignore[attr-defined]
    assert FlagReranker(str(tmp_path), max_length=600).max_length == 600


# ------------------------------------------------------------------ show_progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_auto_on_a_terminal_for_a_batch_or_more(tmp_path: Path, monkeypatch) -> None:
    tiny_export(tmp_path)
    reranker = FlagReranker(str(tmp_path), max_length=16, batch_size=4)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    reranker.compute_score(PAIRS[:3])  # fewer pairs than a batch: no bar, as FlagEmbedding's tqdm
    assert terminal.getvalue() == ""
    reranker.compute_score(PAIRS)
    drawn = terminal.getvalue()
    assert "\rcompute_score 12/12 pairs [########################] 100%" in drawn
    assert re.search(r"\rcompute_score: 12 pairs in [0-9.]+ s", drawn) and drawn.endswith("\n")
    terminal.truncate(0)
    reranker.compute_score(PAIRS, show_progress_bar=False)
    assert terminal.getvalue() == ""


def test_progress_bar_off_when_stderr_is_not_a_terminal_unless_forced(tmp_path: Path, capsys) -> None:
    tiny_export(tmp_path)
    reranker = FlagReranker(str(tmp_path), max_length=16, batch_size=1)
    reranker.compute_score(PAIRS)
    assert capsys.readouterr().err == ""
    forced = FlagReranker(str(tmp_path), max_length=16, batch_size=1, show_progress_bar=True)
    forced.compute_score(PAIRS)
    lines = capsys.readouterr().err.splitlines()
    # a log gets a line per tenth of the work and a last one, never a carriage return
    assert [line.split(" [")[0] for line in lines[:-1]] == [f"compute_score {n:>2}/12 pairs" for n in
                                                             (2, 3, 4, 5, 6, 8, 9, 10, 11)]
    assert lines[-1].startswith("compute_score: 12 pairs in ") and not any("\r" in line for line in lines)


def test_progress_takes_a_tqdm_like_callable_and_refuses_other_values(tmp_path: Path) -> None:
    tiny_export(tmp_path)
    reranker = FlagReranker(str(tmp_path), max_length=16, batch_size=5)
    seen: list[object] = []

    class Tracker:
        def __init__(self, total: int) -> None:
            seen.append(("total", total))

        def update(self, n: int) -> None:
            seen.append(n)

        def close(self) -> None:
            seen.append("closed")

    reranker.compute_score(PAIRS, show_progress_bar=Tracker)
    assert seen == [("total", 12), 5, 5, 2, "closed"]
    with pytest.raises(TypeError, match="show_progress_bar must be None"):
        reranker.compute_score(PAIRS, show_progress_bar="yes")
    with pytest.raises(TypeError, match="show_progress_bar must be None"):
        FlagReranker(str(tmp_path), max_length=16, show_progress_bar=1)


def test_the_bar_says_where_an_interrupted_call_stopped() -> None:
    log = io.StringIO()
    bar = Bar(10, "compute_score", log)
    bar.update(4)
    bar.close()
    bar.close()  # once
    first, last = log.getvalue().splitlines()
    assert first.startswith("compute_score  4/10 pairs [#########---------------]  40% ")
    assert last.startswith("compute_score: 4 pairs in ") and last.endswith("(stopped at 4/10)")


# ------------------------------------------------------------------ messages


def test_the_wrong_class_names_the_class_to_use(tmp_path: Path) -> None:
    tiny_export(tmp_path)  # an encoder export
    with pytest.raises(UnsupportedRequestError) as err:
        FlagLLMReranker(str(tmp_path))
    message = str(err.value)
    assert "model_class=None" not in message  # FlagLLMReranker takes no model_class
    assert f"Use FlagReranker('{tmp_path}'), or FlagAutoReranker.from_finetuned('{tmp_path}')" in message
    assert type(FlagAutoReranker.from_finetuned(str(tmp_path), max_length=16)) is FlagReranker


@pytest.mark.parametrize("name,output", [("BAAI/bge-reranker-v2-gemma", "exports/bge-reranker-v2-gemma-fp32"),
                                         ("bge-reranker-v2-m3", "exports/bge-reranker-v2-m3-fp32"),
                                         ("tiny-gemma", "exports/tiny-gemma-fp32")])
def test_a_model_name_gets_the_export_command(name: str, output: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as err:
        FlagLLMReranker(name)
    message = str(err.value)
    assert "rerank_runtime loads export directories written by rerank-export, not Hugging Face checkpoints" in message
    assert f"`rerank-export --model {name} --output {output}`, then pass '{output}'" in message


def test_a_misspelt_name_or_export_gets_did_you_mean(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"'bge-reranker-v2-gema' is not a directory here \(did you mean "
                                                 r"bge-reranker-v2-gemma\?\)"):
        FlagLLMReranker("bge-reranker-v2-gema")
    tiny_export(tmp_path / "exports" / "tiny-fp32")
    with pytest.raises(ModelNotFoundError, match=r"no export directory at exports/tiny-fp16 \(did you mean "
                                                 r"exports/tiny-fp32\?\); rerank-export writes one"):
        FlagReranker("exports/tiny-fp16")


def test_the_head_position_rule_is_explained_with_the_export_command(tmp_path: Path) -> None:
    # an export baked for cutoff_layers [3, 4]: layer 3 with head 0, layer 4 with head 1 (FlagEmbedding's rule)
    tiny_export(tmp_path, {"score_l3_h0": (1.0, 0.0), "score_l4_h1": (2.0, 0.0)}, model_class=LIGHTWEIGHT)
    LightWeightFlagLLMReranker(str(tmp_path), max_length=16, cutoff_layers=[3])  # a prefix is served
    with pytest.raises(UnsupportedRequestError) as err:
        LightWeightFlagLLMReranker(str(tmp_path), max_length=16, cutoff_layers=[4])
    message = str(err.value)
    assert "serves layer 3 (head 0), layer 4 (head 1); the call needs layer 4 (head 0)" in message
    assert "scores the i-th requested cutoff layer, in ascending order, with head i" in message
    assert "so the export made for cutoff_layers [3, 4] scores layer 4 with another head than this call needs" \
        in message
    assert ("call with the export's cutoff_layers [3, 4], or export one for cutoff_layers [4]: "
            f"`rerank-export --model tests --max-length 16 --cutoff-layers 4 --output {tmp_path}-cutoff4-fp32`"
            in message)


def test_the_server_draws_no_progress_bar_even_on_a_terminal(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("starlette")
    from rerank_serve.model import load
    from rerank_serve.settings import ServeSettings

    tiny_export(tmp_path)
    model = load(ServeSettings(export_dir=str(tmp_path), devices="cpu"))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model.score((16, None), [("hello", "world")] * 300)  # more than a batch: a terminal would get a bar
    assert model.reranker.show_progress_bar is False and terminal.getvalue() == ""
