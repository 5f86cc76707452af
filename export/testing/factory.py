"""Deterministic tiny and mid checkpoints of every family, in the real checkpoints' Hugging Face layout.

`write_checkpoint("gemma", "tiny", out_dir)` writes config.json, model.safetensors and the tokenizer files. The same
family, size and code always give the same bytes; nothing is downloaded. FlagEmbedding 1.4.2 loads every one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

from ..families import REGISTRY, get_family
from ..output import fresh_dir, umask

SIZES = ("tiny", "mid")
# Built-in demo model names: "<size>-<family>", e.g. "tiny-gemma2-lightweight".
BUILTIN = {f"{size}-{name.replace('_', '-')}": (name, size) for name in REGISTRY for size in SIZES}
# Padding side the generated tokenizer declares, as the real checkpoints do (FlagEmbedding uses it, except that the
# lightweight class forces right padding).
_PADDING_SIDE = {"xlm_roberta": "right", "gemma": "left", "minicpm_layerwise": "right", "gemma2_lightweight": "left"}
FORMAT_VERSION = "1"  # bump when generated checkpoints change, so cached copies are rebuilt


def cache_root() -> Path:
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank"))


def builtin_checkpoint(name: str, root: Path | None = None) -> Path:
    """The directory of a built-in model, generated on first use (atomically) and reused afterwards."""
    family, size = BUILTIN[name]
    out = (root or cache_root() / "checkpoints") / f"v{FORMAT_VERSION}" / name
    if not (out / "config.json").is_file():
        write_checkpoint(family, size, out)
    return out


def write_checkpoint(family_name: str, size: str, out_dir: str | Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    from .tokenizers import write_tokenizer

    family = get_family(family_name)
    if size not in family.sizes:
        raise ValueError(f"size {size!r} is not one of {sorted(family.sizes)}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(out.parent, f".{out.name}-")
    try:
        write_tokenizer(family.tokenizer_style, tmp, padding_side=_PADDING_SIDE[family.name])
        config = dict(family.sizes[size])
        vocab = Tokenizer.from_file(str(tmp / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        config["vocab_size"] = max(config["vocab_size"], vocab)
        config["transformers_version"] = "4.47.1"
        model = family.build_model(config)
        state = {k: _init(k, v, family.init_std[size], family.name) for k, v in model.state_dict().items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o666 & ~umask())  # safetensors writes 0600
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    del torch
    return out


def _init(name: str, like, std: float, family: str):
    """A parameter drawn from its own generator, seeded by its name: independent of construction order."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(f"{family}/{name}".encode()))
    noise = torch.randn(like.shape, generator=gen, dtype=torch.float32)
    if "norm" in name.lower():
        if name.endswith("bias"):
            return noise * 0.1
        # Gemma's RMSNorm multiplies by (1 + w), the others by w: both end near 1.
        plus_one = family in ("gemma", "gemma2_lightweight") and "LayerNorm" not in name
        return noise * 0.1 if plus_one else 1.0 + noise * 0.1
    return noise * std
