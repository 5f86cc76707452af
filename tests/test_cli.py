"""rerank-export: refusals through the CLI and the API, atomic output, --help / list, and the int8 refusal (exit 3).

Bad input exits 2 with a message that says what was expected and what to do, and writes nothing; a failed
verification exits 3 and writes nothing either.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rerank_export import cli
from rerank_export.exporter import ExportOptions, export_onnx, plan_export
from rerank_export.families import REGISTRY
from rerank_export.probe import PROBE_PAIRS
from rerank_export.progress import Progress
from rerank_export.reference import FlagAutoReranker as Reference
from rerank_export.testing.factory import BUILTIN
from rerank_runtime.errors import ExportError, ModelNotFoundError, UnknownFamilyError

# (id, family or None for a path given in the options, options beyond model/output, error, message fragments)
REFUSALS = [
    ("missing-directory", None, {"model": "{tmp}/no-such-checkpoint"}, ModelNotFoundError,
     ["no-such-checkpoint", "not a directory", "checkpoint directory holding config.json", "built-in model"]),
    ("unknown-hub-id", None, {"model": "BAAI/bge-reranker-no-such-model"}, ModelNotFoundError,
     ["not in the local Hugging Face cache", "`hf download BAAI/bge-reranker-no-such-model`",
      "--model /path/to/checkpoint"]),
    ("misspelt-built-in", None, {"model": "tiny-gema"}, ModelNotFoundError,
     ["BAAI/tiny-gema is not in the local Hugging Face cache", "(did you mean tiny-gemma?)"]),
    ("underscore-built-in", None, {"model": "tiny-gemma2_lightweight"}, ModelNotFoundError,
     ["(did you mean tiny-gemma2-lightweight?)"]),
    ("misspelt-hub-id", None, {"model": "BAAI/bge-reranker-v2-gema"}, ModelNotFoundError,
     ["(did you mean BAAI/bge-reranker-v2-gemma?)", "`hf download BAAI/bge-reranker-v2-gema`"]),
    ("kind-mismatch", "gemma", {"model_class": "encoder-only-base"}, UnknownFamilyError,
     ["GemmaForCausalLM", "encoder-only-base", "supported"]),
    ("compression-on-encoder", "xlm_roberta", {"compress_ratio": 2}, ExportError,
     ["lightweight reranker only", "xlm_roberta"]),
    ("compress-layers-on-encoder", "xlm_roberta", {"compress_layers": (1,)}, ExportError,
     ["lightweight reranker only"]),
    ("cutoff-on-gemma", "gemma", {"cutoff_layers": (1,)}, ExportError, ["--cutoff-layers", "gemma has one score"]),
    ("cutoff-beyond-model", "minicpm_layerwise", {"cutoff_layers": (9,)}, ExportError, ["[2, 6]", "invalid: [9]"]),
    ("cutoff-before-first-head", "gemma2_lightweight", {"cutoff_layers": (1,)}, ExportError,
     ["[2, 6]", "invalid: [1]"]),
    ("compress-layer-never-runs", "gemma2_lightweight", {"compress_ratio": 2, "compress_layers": (2, 9)}, ExportError,
     ["[9] would never run", "0 < c < 6", "within 1..5"]),
    ("default-compress-layer-never-runs", "gemma2_lightweight", {"compress_ratio": 2}, ExportError,
     ["[8] would never run", "the default is [8]"]),
    ("compress-layers-without-ratio", "gemma2_lightweight", {"compress_layers": (3,)}, ExportError,
     ["no effect at compress ratio 1", "--compress-ratio 2"]),
    ("max-length", "gemma", {"max_length": 1}, ExportError, ["--max-length must be at least 2, got 1"]),
    ("max-length-beyond-positions", "xlm_roberta", {"max_length": 1000}, ExportError,
     ["--max-length 1000", "position table serves 512 tokens", "--max-length 512 or less"]),
]
FLAGS = {"model_class": "--model-class", "compress_ratio": "--compress-ratio", "compress_layers": "--compress-layers",
         "cutoff_layers": "--cutoff-layers", "max_length": "--max-length", "model": "--model"}


def _case(case, checkpoint, tmp_path) -> ExportOptions:
    _, family, options, _, _ = case
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    model = options.pop("model", None) or str(checkpoint(family))
    return ExportOptions(model=model, output=str(tmp_path / "out"), **options)


def _argv(opts: ExportOptions) -> list[str]:
    argv = ["--model", opts.model, "--output", str(opts.output)]
    for field, flag in FLAGS.items():
        value = getattr(opts, field)
        if field != "model" and value != getattr(ExportOptions(model=""), field):
            argv += [flag, *map(str, value if isinstance(value, tuple) else (value,))]
    return argv


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_bad_input_exits_2_with_an_actionable_message(case, checkpoint, tmp_path, capsys, no_hub):
    opts = _case(case, checkpoint, tmp_path)
    assert cli.main(_argv(opts)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rerank-export: error: ")
    for fragment in case[4]:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["empty-hub"]), "nothing may be written"


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_api_refuses_before_loading_anything(case, checkpoint, tmp_path, no_hub, monkeypatch):
    import rerank_export.exporter as exporter

    monkeypatch.setattr(exporter, "load_model", lambda *a: pytest.fail("plan_export must refuse before loading"))
    with pytest.raises(case[3]) as err:
        export_onnx(_case(case, checkpoint, tmp_path), Progress([], quiet=True))
    assert all(fragment in str(err.value) for fragment in case[4]), str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["--model-class", "encoder"], "invalid choice: 'encoder'"),
    (["--int8", "--fp16"], "not allowed with argument"),
    (["--bf16", "--int8"], "not allowed with argument"),
    (["--cutoff-layers", "three"], "invalid int value"),
])
def test_argparse_refusals_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--model", "tiny-gemma", *argv])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_missing_model_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2 and "--model" in capsys.readouterr().err


def test_existing_output_is_kept_without_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty directory is not in the way
    assert plan_export(ExportOptions(model=str(checkpoint("gemma")), output=str(empty))).output == empty
    with pytest.raises(ExportError, match="--overwrite replaces only an export directory"):  # keep.txt is not ours
        plan_export(ExportOptions(model=str(checkpoint("gemma")), output=str(out), overwrite=True))


@pytest.mark.parametrize("failure", [RuntimeError("trace failed"), KeyboardInterrupt()])
def test_failure_mid_export_leaves_nothing_half_written(failure, checkpoint, tmp_path, monkeypatch):
    import rerank_export.onnx_export as onnx_export

    def half_trace(wrapper, family, request, pad_id, path):
        path.write_bytes(b"half a graph")
        raise failure

    monkeypatch.setattr(onnx_export, "trace_to_onnx", half_trace)
    opts = ExportOptions(model=str(checkpoint("gemma")), output=str(tmp_path / "fresh"))
    with pytest.raises(type(failure)):
        export_onnx(opts, Progress([], quiet=True))
    assert list(tmp_path.iterdir()) == [], "no output and no temporary directory may remain"

    previous = tmp_path / "previous"
    previous.mkdir()
    old = '{"format": "onnx", "graph": {}, "schema_version": 2, "spec": {}}'  # an export (--overwrite replaces those)
    (previous / "manifest.json").write_text(old)
    with pytest.raises(type(failure)):
        export_onnx(replace(opts, output=str(previous), overwrite=True), Progress([], quiet=True))
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]
    assert (previous / "manifest.json").read_text() == old, "a failed --overwrite keeps the old output"


def test_flags_map_onto_export_options(monkeypatch):
    import rerank_export.exporter as exporter

    seen: list[ExportOptions] = []
    monkeypatch.setattr(exporter, "export_onnx", lambda opts: seen.append(opts) or opts.output)
    assert cli.main(["--model", "m", "--output", "o", "--bf16", "--model-class", "decoder-only-lightweight",
                     "--cutoff-layers", "4", "6", "--compress-ratio", "2", "--compress-layers", "2", "4",
                     "--max-length", "256", "--overwrite", "--no-verify"]) == 0
    assert cli.main(["--model", "m", "--int8"]) == 0
    assert seen == [
        ExportOptions(model="m", output="o", model_class="decoder-only-lightweight", precision="bf16", max_length=256,
                      cutoff_layers=(4, 6), compress_ratio=2, compress_layers=(2, 4), overwrite=True, verify=False),
        ExportOptions(model="m", precision="int8"),
    ]


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for flag in ("--model", "--output", "--model-class", "--fp16", "--bf16", "--int8", "--cutoff-layers",
                 "--compress-ratio", "--compress-layers", "--overwrite", "--no-verify", "rerank-export list"):
        assert flag in out
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for family in REGISTRY.values():
        assert any(line.split()[:2] == [family.name, family.model_class] for line in out.splitlines()), out
    assert all(name in out for name in BUILTIN)


def test_python_m_help_imports_nothing_heavy():
    run = subprocess.run([sys.executable, "-m", "rerank_export", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("usage: rerank-export"), run.stderr
    probe = ("import sys\nfrom rerank_export.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr


def _int8_breaking_copy(src: Path, dst: Path) -> Path:
    """The trained tiny layerwise MiniCPM, changed so that int8 must lose its ranking while fp32 keeps it.

    In every layer after the first, both norms scale channel 0 by 10^4 and the projections they feed (q/k/v,
    gate/up) ignore that channel, so the fp32 model still ranks (each layer merely loses one input channel). int8
    quantises each norm's output per tensor: the scale follows the 10^4 channel, every other channel rounds to zero,
    and the projections' outputs become exactly zero. So in int8 those layers add nothing: every exit scores the
    first layer's state (which the int8 plan keeps in fp32), not the state of its own layer.
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    layers = json.loads((dst / "config.json").read_text())["num_hidden_layers"]
    for layer in range(1, layers):
        for norm, projections in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                                  ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            state[f"model.layers.{layer}.{norm}.weight"][0] = 1e4  # MiniCPM's norms multiply by w
            for projection in projections:
                state[f"model.layers.{layer}.{projection}.weight"][:, 0] = 0.0
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_int8_below_the_ranking_bar_exits_3_and_writes_nothing(checkpoint, tmp_path, capsys):
    model = _int8_breaking_copy(checkpoint("minicpm_layerwise"), tmp_path / "model")
    fp32 = Reference.from_finetuned(str(model), batch_size=4).compute_score_array(PROBE_PAIRS)
    assert np.std(fp32) > 1.0, "the changed model must still spread its scores in fp32"
    out = tmp_path / "out"
    assert cli.main(["--model", str(model), "--int8", "--output", str(out)]) == 3
    err = capsys.readouterr().err
    assert f"rerank-export: verification failed: nothing was written to {out}" in err
    assert "int8 tolerance" in err and "(min 0.99)" in err and "--no-verify" in err
    assert ".out-" not in err, "the message names the output, not the temporary directory"
    rho = float(re.search(r"Spearman (-?[0-9.]+)", err).group(1))
    assert rho < 0.95, f"int8 should miss the bar by far, not by a hair: Spearman {rho}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --- bad checkpoints and paths: exit 2, one line naming the file and the problem, no traceback ----------------------


def _break_config(**changes):
    def edit(ckpt: Path) -> None:
        config = json.loads((ckpt / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
        (ckpt / "config.json").write_text(json.dumps(config))
    return edit


def _write(name: str, content: bytes):
    return lambda ckpt: (ckpt / name).write_bytes(content)


def _truncate(name: str):
    return lambda ckpt: (ckpt / name).write_bytes((ckpt / name).read_bytes()[:100])


def _weights_outside(ckpt: Path) -> None:
    outside = ckpt.parent / "outside"
    outside.mkdir()
    (ckpt / "model.safetensors").rename(outside / "model.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../outside/model.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


BAD_CHECKPOINTS = [
    ("corrupt-safetensors", _write("model.safetensors", bytes(range(256)) * 8),
     ["model.safetensors is not a valid safetensors file"]),
    ("truncated-safetensors", _truncate("model.safetensors"), ["model.safetensors is not a valid safetensors file"]),
    ("config-without-hidden-size", _break_config(hidden_size=None),
     ["config.json has no 'hidden_size'", "gemma architecture needs"]),
    ("config-not-an-object", _write("config.json", b"[1, 2]"), ["config.json must hold a JSON object, found list"]),
    ("config-not-json", _write("config.json", b"{oops"), ["config.json is not valid JSON"]),
    ("absurd-intermediate-size", _break_config(intermediate_size=8_000_000),
     ["the tensors in", "model.safetensors do not match the gemma architecture that", "config.json describes",
      "model.layers.0.mlp.down_proj.weight: config.json implies [32, 8000000], the weights hold [32, 64]"]),
    ("weight-map-outside", _weights_outside,
     ["model.safetensors.index.json", "'../outside/model.safetensors' is outside the checkpoint"]),
    ("tokenizer-not-json", _write("tokenizer.json", b"{not json"), ["tokenizer.json cannot be read"]),
]


@pytest.mark.parametrize("name,damage,fragments", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_a_bad_checkpoint_exits_2_with_one_line(name, damage, fragments, checkpoint, tmp_path, capsys, monkeypatch):
    """Checked before the model is built: a spy fails the test if any architecture is built on a real device."""
    import dataclasses

    import torch

    from rerank_export.families import REGISTRY as families

    ckpt = Path(shutil.copytree(checkpoint("gemma"), tmp_path / "ckpt"))
    damage(ckpt)
    real = families["gemma"]
    built: list[str] = []

    def spy(config):
        built.append(torch.empty(0).device.type)
        if built[-1] != "meta":
            raise AssertionError("the model was built on a real device before its weights were checked")
        return real.build_model(config)

    monkeypatch.setitem(families, "gemma", dataclasses.replace(real, build_model=spy))
    assert cli.main(["--model", str(ckpt), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rerank-export: error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not (tmp_path / "out").exists() and set(built) <= {"meta"}


@pytest.mark.parametrize("where", ["parent-is-a-file", "read-only-parent"])
def test_an_unwritable_output_exits_2_with_one_line(where, checkpoint, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "parent"
    if where == "parent-is-a-file":
        parent.write_text("a file")
    else:  # as root, chmod cannot make a directory read-only: the file system says so instead
        import os

        parent.mkdir()
        real_mkdir = os.mkdir

        def read_only(path, mode=0o777, *args, **kwargs):
            if Path(path).parent == parent:
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only)
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(parent / "out"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rerank-export: error: "), err
    assert str(parent) in err and ("is a file, not a directory" in err or "Permission denied" in err)
    assert list(tmp_path.iterdir()) == [parent]
