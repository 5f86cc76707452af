"""Deterministic tiny and mid checkpoints of every family, in the real checkpoints' Hugging Face layout.

`write_checkpoint("gemma", "tiny", out_dir)` writes config.json, model.safetensors and the tokenizer files with random
weights; `write_trained_checkpoint` then trains such a checkpoint on the synthetic relevance task (training.py), so
that its scores rank pairs. The same family, size and code always give the same bytes; nothing is downloaded.
FlagEmbedding 1.4.2 loads every one of them. What each family's checkpoints look like is its recipe (recipes.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import NamedTuple

from ..families import REGISTRY, get_family
from ..output import fresh_dir, umask
from .recipes import get_recipe

SIZES = ("tiny", "mid")
FORMAT_VERSION = "1"  # bump when generated checkpoints change, so cached copies are rebuilt
TRAINING_VERSION = "1"  # bump when the training code or the synthetic task changes, so trained copies are retrained


class Builtin(NamedTuple):
    family: str
    size: str
    trained: bool


def builtin_name(family: str, size: str = "tiny", trained: bool = False) -> str:
    """"<size>-<family with hyphens>[-trained]", e.g. "tiny-gemma2-lightweight-trained"."""
    return f"{size}-{family.replace('_', '-')}{'-trained' if trained else ''}"


BUILTIN = {builtin_name(f, size, trained): Builtin(f, size, trained)
           for f in REGISTRY for size in SIZES for trained in (False, True)}


def cache_root() -> Path:
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank"))


def builtin_path(name: str, root: Path | None = None) -> Path:
    """Where the built-in model `name` is cached (RERANK_CACHE/checkpoints by default), generated or not.

    Trained models live under a key of the format and training versions and of the recipe itself, so that changing
    any of them trains afresh instead of reusing a stale copy.
    """
    family, size, trained = BUILTIN[name]
    base = root or cache_root() / "checkpoints"
    if not trained:
        return base / f"v{FORMAT_VERSION}" / name
    return base / f"v{FORMAT_VERSION}-trained" / f"{name}-{training_key(family, size)}"


def builtin_checkpoint(name: str, root: Path | None = None) -> Path:
    """The directory of a built-in model, generated (and trained) on first use, atomically, and reused afterwards."""
    family, size, trained = BUILTIN[name]
    out = builtin_path(name, root)
    if not (out / "config.json").is_file():
        if trained:
            write_trained_checkpoint(family, size, out)
        else:
            write_checkpoint(family, size, out)
    return out


def training_key(family: str, size: str) -> str:
    """The cache key of a trained checkpoint: the factory's versions, the config, the init and the training recipe."""
    recipe = get_recipe(family)
    stamp = [FORMAT_VERSION, TRAINING_VERSION, recipe.sizes[size], recipe.init_std[size],
             recipe.training[size].to_dict()]
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:10]


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return fresh_dir(out.parent, f".{out.name}-")


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished checkpoint into place; an existing one at `out` is replaced."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def write_checkpoint(family_name: str, size: str, out_dir: str | Path, *, init_std: float | None = None) -> Path:
    """A random checkpoint of `family_name` at `size`; init_std overrides the recipe's weight init std."""
    out = Path(out_dir)
    tmp = _staging(out)
    try:
        _generate(family_name, size, tmp, init_std)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_trained_checkpoint(family_name: str, size: str, out_dir: str | Path) -> Path:
    """A checkpoint trained by the recipe's run, with a training.json that records the recipe and the run."""
    recipe = get_recipe(family_name).training[size]
    out = Path(out_dir)
    tmp = _staging(out)
    try:
        from .training import train_checkpoint

        _generate(family_name, size, tmp, recipe.init_std)
        run = train_checkpoint(tmp, recipe)
        record = {"family": family_name, "size": size, "training_version": TRAINING_VERSION,
                  "recipe": recipe.to_dict(), "run": run}
        (tmp / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _generate(family_name: str, size: str, out: Path, init_std: float | None) -> None:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    from .tokenizers import write_tokenizer

    family, recipe = get_family(family_name), get_recipe(family_name)
    if size not in recipe.sizes:
        raise ValueError(f"size {size!r} is not one of {sorted(recipe.sizes)}")
    write_tokenizer(recipe.tokenizer_style, out, padding_side=recipe.padding_side)
    config = dict(recipe.sizes[size])
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    config["vocab_size"] = max(config["vocab_size"], vocab)
    config["transformers_version"] = "4.47.1"
    model = family.build_model(config)
    std = recipe.init_std[size] if init_std is None else init_std
    state = {k: _init(k, v, std, family.name, recipe.norm_weight) for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o666 & ~umask())  # safetensors writes 0600
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _init(name: str, like, std: float, family: str, norm_weight: float):
    """A parameter drawn from its own generator, seeded by its name: independent of construction order."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(f"{family}/{name}".encode()))
    noise = torch.randn(like.shape, generator=gen, dtype=torch.float32)
    if "norm" in name.lower():
        return noise * 0.1 + (0.0 if name.endswith("bias") else norm_weight)
    return noise * std
