"""Find a checkpoint (local directory, hub cache, built-in demo model), load it, and describe it for the host."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rerank_runtime._deps import require
from rerank_runtime.errors import ArtifactError, ModelNotFoundError
from rerank_runtime.hints import did_you_mean
from rerank_runtime.integrity import read_tokenizer, sha256_file
from rerank_runtime.layout import pair_template, text_ids
from rerank_runtime.kinds import AUTO_RERANKER_MAPPING, get_kind
from rerank_runtime.spec import YES_TEXT, ModelSpec

from .families import FamilySpec
from .weights import INDEX, check_weights, load_state_dict, read_json

# Tokenizer classes whose transformers default padding side is left (when tokenizer_config.json names none).
_LEFT_PADDING_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def resolve_model(name: str, say: Callable[[str], None] | None = None) -> Path:
    """A local directory, a built-in demo model, a short BAAI name or a hub id found in the local hub cache.

    A built-in model is generated (and trained) on first use; `say` is told so, with where it is cached."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from .testing.factory import BUILTIN, builtin_checkpoint, builtin_path, cache_root

    if name in BUILTIN:
        if say is not None and not (builtin_path(name) / "config.json").is_file():
            training = " and a short training run" if BUILTIN[name].trained else ""
            say(f"generating the built-in model {name} (first use{training}); it is cached under "
                f"{cache_root() / 'checkpoints'} (RERANK_CACHE)")
        return builtin_checkpoint(name)
    repo = name if "/" in name else f"BAAI/{name}"
    known = [*BUILTIN, *(f"BAAI/{n}" if "/" in name else n for n in AUTO_RERANKER_MAPPING if n.startswith("bge-"))]
    if repo.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model {name!r} is not a directory{did_you_mean(name, known)}; pass a checkpoint directory holding "
            "config.json, a hub id (org/name) that is in the local Hugging Face cache, or a built-in model "
            "(`rerank-export list`)"
        )
    snapshot = _cached_snapshot(repo)
    if snapshot is None:
        guess = did_you_mean(name, known) if name not in known and repo not in known else ""
        raise ModelNotFoundError(
            f"{repo} is not in the local Hugging Face cache ({hub_cache_dir()}){guess}, and this tool never downloads "
            f"weights. Download it first (`hf download {repo}`, from huggingface_hub) or pass --model "
            "/path/to/checkpoint; built-in models: `rerank-export list`"
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


def load_model(directory: Path, config: dict[str, Any], family: FamilySpec):
    """The family's torch module with the checkpoint's weights, fp32, eval mode; names and shapes are checked against
    config.json before the model is built (weights.check_weights)."""
    torch = require("torch")
    check_weights(directory, config, family)
    model = family.build_model(config)
    state = load_state_dict(directory)
    if "lm_head.weight" in state and hasattr(model, "untied_lm_head") and not config.get("tie_word_embeddings", True):
        model.untied_lm_head = state["lm_head.weight"].float()
    expected = model.state_dict()
    model.load_state_dict({k: state[k].to(torch.float32) for k in expected})
    return model.float().eval()


def tokenizer_file(directory: Path) -> Path:
    """tokenizer.json, or one converted with transformers from the slow files when the checkpoint has none.

    Conversions are cached under RERANK_CACHE/tokenizers/<hash of the checkpoint's non-weight files>, so two
    checkpoints with the same folder name never share one, and the checkpoint's own Python is never run
    (trust_remote_code=False: transformers raises instead of asking).
    """
    path = directory / "tokenizer.json"
    if path.is_file():
        return path
    from .testing.factory import cache_root

    out = cache_root() / "tokenizers" / _tokenizer_key(directory) / "tokenizer.json"
    if out.is_file():
        return out
    transformers = require("transformers")
    try:
        backend = transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False).backend_tokenizer
    except Exception as exc:  # transformers raises many types; none of them is ours
        raise ArtifactError(f"{directory} has no tokenizer.json and its slow tokenizer cannot be converted without "
                            f"running code ({type(exc).__name__}: {' '.join(str(exc).split())}); add the model's "
                            "tokenizer.json to the checkpoint") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}")
    backend.save(str(partial))
    os.replace(partial, out)  # readers never see half a file
    return out


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")


def _tokenizer_key(directory: Path) -> str:
    """A hash of every file of the checkpoint except its weights (tokenizer files, configs)."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and path.name != INDEX:
            digest.update(f"{path.name}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()[:32]


def _token(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def model_spec(directory: Path, config: dict[str, Any], family: FamilySpec) -> ModelSpec:
    """What the host needs to build FlagEmbedding's token layout for this checkpoint."""
    tok = read_tokenizer(tokenizer_file(directory))
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
                  max_positions=family.max_positions(config))
    if not get_kind(family.model_class).prompted:  # the encoder's pair template
        prefix, middle, suffix = pair_template(tok)
        return ModelSpec(**common, pair_prefix=prefix, pair_middle=middle, pair_suffix=suffix)
    yes = text_ids(tok, YES_TEXT)
    layers = family.layers(config)
    n, start, sep = layers if layers else (None, None, 1)
    return ModelSpec(**common, bos_token_id=token_id("bos_token", None), yes_token_id=yes[0],
                     num_layers=n, start_layer=start, layer_sep=sep)

