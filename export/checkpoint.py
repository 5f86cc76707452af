"""Find a checkpoint (local directory, hub cache, built-in demo model), load it, and describe it for the host."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rerank_runtime._deps import require
from rerank_runtime.errors import ArtifactError, ModelNotFoundError
from rerank_runtime.layout import pair_template, text_ids
from rerank_runtime.spec import ENCODER, YES_TEXT, ModelSpec

from .families import FamilySpec

# Tokenizer classes whose transformers default padding side is left (when tokenizer_config.json names none).
_LEFT_PADDING_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def resolve_model(name: str) -> Path:
    """A local directory, a built-in demo model, a short BAAI name or a hub id found in the local hub cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from .testing.factory import BUILTIN, builtin_checkpoint

    if name in BUILTIN:
        return builtin_checkpoint(name)
    repo = name if "/" in name else f"BAAI/{name}"
    if repo.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model {name!r} is not a directory; pass a checkpoint directory holding config.json, a hub id (org/name) "
            f"that is in the local Hugging Face cache, or a built-in model: {sorted(BUILTIN)}"
        )
    snapshot = _cached_snapshot(repo)
    if snapshot is None:
        raise ModelNotFoundError(
            f"{repo} is not in the local Hugging Face cache ({hub_cache_dir()}) and this tool never downloads weights. "
            f"Download it first (`huggingface-cli download {repo}`) or pass --model /path/to/checkpoint"
        )
    return snapshot


def _cached_snapshot(repo: str) -> Path | None:
    root = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / "main"
    if ref.is_file():
        snap = root / "snapshots" / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap
    snaps = sorted((root / "snapshots").glob("*/config.json")) if (root / "snapshots").is_dir() else []
    return snaps[-1].parent if snaps else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None


def load_state_dict(directory: Path) -> dict[str, Any]:
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if single.is_file() or index.is_file():
        st = require("safetensors.torch")
        files = [single] if single.is_file() else sorted({directory / f for f in read_json(index)["weight_map"].values()})
        state: dict[str, Any] = {}
        for f in files:
            state.update(st.load_file(str(f)))
        return state
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        torch = require("torch")
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise ArtifactError(f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_model(directory: Path, config: dict[str, Any], family: FamilySpec):
    """The family's torch module with the checkpoint's weights, fp32, eval mode; names and shapes checked."""
    torch = require("torch")
    model = family.build_model(config)
    state = load_state_dict(directory)
    if "lm_head.weight" in state and hasattr(model, "untied_lm_head") and not config.get("tie_word_embeddings", True):
        model.untied_lm_head = state["lm_head.weight"].float()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(family.ignorable_keys))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise ArtifactError(
            f"{directory} does not match the {family.name} architecture: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, wrong shapes {wrong[:8]}"
        )
    model.load_state_dict({k: state[k].to(torch.float32) for k in expected})
    return model.float().eval()


def tokenizer_file(directory: Path) -> Path:
    """tokenizer.json, converted once with transformers from the slow files when the checkpoint has none."""
    path = directory / "tokenizer.json"
    if path.is_file():
        return path
    transformers = require("transformers")
    out = Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank")) / "tokenizers" / directory.name
    out.mkdir(parents=True, exist_ok=True)
    transformers.AutoTokenizer.from_pretrained(str(directory)).backend_tokenizer.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


def _token(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def model_spec(directory: Path, config: dict[str, Any], family: FamilySpec) -> ModelSpec:
    """What the host needs to build FlagEmbedding's token layout for this checkpoint."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file(directory)))
    tcfg_path = directory / "tokenizer_config.json"
    tcfg = read_json(tcfg_path) if tcfg_path.is_file() else {}
    smap_path = directory / "special_tokens_map.json"
    smap = read_json(smap_path) if smap_path.is_file() else {}

    def token_id(name: str, default: str | None = None) -> int | None:
        text = _token(tcfg.get(name)) or _token(smap.get(name)) or default
        return None if text is None else tok.token_to_id(text)

    pad = token_id("pad_token")
    if pad is None:
        pad = config.get("pad_token_id")
    if pad is None:
        raise ArtifactError(f"{directory}: the tokenizer has no pad token and config.json no pad_token_id; FlagEmbedding needs one")
    side = tcfg.get("padding_side") or ("left" if tcfg.get("tokenizer_class") in _LEFT_PADDING_CLASSES else "right")
    common = dict(model_class=family.model_class, pad_token_id=pad, padding_side=side,
                  model_max_length=_max_length(tcfg), max_positions=family.max_positions(config))
    if family.model_class == ENCODER:
        prefix, middle, suffix = pair_template(tok)
        return ModelSpec(**common, pair_prefix=prefix, pair_middle=middle, pair_suffix=suffix)
    yes = text_ids(tok, YES_TEXT)
    layers = family.layers(config)
    n, start, sep = layers if layers else (None, None, 1)
    return ModelSpec(**common, bos_token_id=token_id("bos_token", None), yes_token_id=yes[0],
                     num_layers=n, start_layer=start, layer_sep=sep)


def _max_length(tcfg: dict[str, Any]) -> int | None:
    value = tcfg.get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and value < 1e9 else None
