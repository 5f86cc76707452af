"""A short, deterministic training run that turns a generated checkpoint into a trained reranker.

The task is relevance_pairs' synthetic one: a query names two or three of the corpus' names and places and the
passage holds all, some or none of them; the target is the share it holds (binary cross-entropy on the raw score).
Training runs the family's own score graph (build_wrapper) on exactly the feeds compute_score builds: the pairs go
through a reranker whose backend only records what the host code hands it (instructions, prompt, separators, BOS,
padding side, the pad multiple and, for the lightweight kind, the compression plan). Every exit of a request is in the
loss, and for the kinds with cutoff layers each step draws its own request (a set of cutoff layers and, where the kind
compresses, a ratio and stages), so that every head is trained with every layer FlagEmbedding can pair it with.

Deterministic: seeded generators, a fixed data order and one torch thread (the same arithmetic on any core count).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rerank_runtime.kinds import build_request, get_kind
from rerank_runtime.spec import GraphRequest, Loaded

from ..output import umask
from .pairs import relevance_pairs

HELD_OUT_SEED = 1_000_003  # relevance_pairs seed of the held-out set (training uses the recipe's seed, 0)


@dataclass(frozen=True)
class TrainingRecipe:
    steps: int
    batch_size: int
    learning_rate: float  # AdamW peak, after a linear warm-up, decaying linearly to 0
    max_sentences: int = 3  # passages hold 1..max_sentences corpus sentences
    init_std: float | None = None  # weight init of the starting checkpoint; None: the size's own
    compress_ratios: tuple[int, ...] = (1, 1, 1, 2)  # drawn per step for kinds that compress
    warmup: int = 10
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """As JSON stores it (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


class _Recorder:
    """A spec.Front that runs no graph: it keeps the last request and feeds, and scores each row with its own index."""

    concurrency = 1

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.request: GraphRequest = GraphRequest()
        self.feeds: dict[str, np.ndarray] = {}

    def check(self, request: GraphRequest) -> None:
        self.inner.check(request)

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request, self.feeds = request, feeds
        rows = np.arange(len(feeds["input_ids"]), dtype=np.float32)
        return [rows] * len(request.output_names)


def exit_layers(spec: Any) -> list[int]:
    """The layers a layerwise or lightweight model can exit at (its valid cutoff_layers)."""
    return list(range(spec.start_layer, spec.num_layers + 1, spec.layer_sep))


def _draw_call(rng: random.Random, spec: Any, recipe: TrainingRecipe) -> dict[str, Any]:
    """compute_score arguments for one step: defaults, plus random cutoffs and compression where the kind takes them."""
    kind = get_kind(spec.model_class)
    if not kind.takes_cutoff:
        return {}
    valid = exit_layers(spec)
    cutoffs = sorted(rng.sample(valid, rng.randint(1, len(valid))))
    call: dict[str, Any] = {"cutoff_layers": cutoffs}
    stages = list(range(1, max(cutoffs)))
    if kind.takes_compression and stages:
        call["compress_ratio"] = rng.choice(recipe.compress_ratios)
        call["compress_layers"] = sorted(rng.sample(stages, rng.randint(1, min(2, len(stages)))))
    return call


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: the same arithmetic on any core count, and no spinning threads on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Feeder:
    """Turns pairs into exactly the graph inputs compute_score feeds (through a reranker over a _Recorder), with the
    targets in row order (the host sorts pairs by length)."""

    def __init__(self, loaded: Loaded, name: str) -> None:
        from rerank_runtime.rerankers import FlagAutoReranker

        self.model = loaded.front.models[0]  # a ReferenceFront: the reference's torch model on its device
        self.recorder = _Recorder(loaded.front)
        self.reranker = FlagAutoReranker.from_loaded(replace(loaded, front=self.recorder), name)

    def __call__(self, pairs: list[list[str]], grades: list[float],
                 call: dict[str, Any]) -> tuple[GraphRequest, Any, Any]:
        import torch

        rows = np.atleast_2d(self.reranker.compute_score_array(pairs, batch_size=len(pairs), **call))[0]
        if len(self.recorder.feeds["input_ids"]) != len(pairs):  # one batch holds them all, so one feed is the step
            raise RuntimeError(f"expected one batch of {len(pairs)} rows, the last feed had "
                               f"{len(self.recorder.feeds['input_ids'])}")
        target = torch.empty(len(pairs))
        target[torch.from_numpy(rows.astype(np.int64))] = torch.tensor(grades)
        request = self.recorder.request
        return request, self.model.inputs(request, self.recorder.feeds), target


def train_checkpoint(directory: Path, recipe: TrainingRecipe) -> dict[str, Any]:
    """Train the checkpoint in `directory` in place (model.safetensors is rewritten, same names and shapes).

    Returns the wall and CPU seconds and the mean loss of the first and last ten steps.
    """
    import torch
    from safetensors.torch import save_file

    from ..reference import load_reference

    start, cpu = time.perf_counter(), time.process_time()
    with one_thread():
        torch.manual_seed(recipe.seed)
        loaded = load_reference(directory, model_class=None)
        reference = loaded.front.models[0]  # a ReferenceFront: the reference's torch model on its device
        model, config, family = reference.model, reference.config, reference.family
        feed = _Feeder(loaded, str(directory))
        pairs, grades = relevance_pairs(recipe.steps * recipe.batch_size, recipe.seed, recipe.max_sentences)
        rng = random.Random(recipe.seed)
        extras = {"yes_token_id": loaded.spec.yes_token_id, "train": True}
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.98), weight_decay=0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / recipe.warmup) * (1 - s / recipe.steps))
        losses = []
        for lo in range(0, recipe.steps * recipe.batch_size, recipe.batch_size):
            hi = lo + recipe.batch_size
            request, inputs, target = feed(pairs[lo:hi], grades[lo:hi], _draw_call(rng, loaded.spec, recipe))
            out = family.build_wrapper(model, config, request, extras)(*inputs)
            outs = out if isinstance(out, tuple) else (out,)
            loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o, target) for o in outs) / len(outs)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(directory / "model.safetensors", 0o666 & ~umask())  # safetensors writes 0600
    return {"seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
            "first_loss": round(float(np.mean(losses[:10])), 4), "last_loss": round(float(np.mean(losses[-10:])), 4)}


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive pair outscores a negative one (ties count half)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def evaluation_calls(spec: Any) -> list[dict[str, Any]]:
    """The requests every exit is judged by: every layer at once (head i at its own layer) and, for the kinds with
    cutoff layers, each layer alone (the lightweight class scores a lone cutoff with head 0) and, where the kind
    compresses, every layer with a ratio-2 stage before the deepest."""
    kind = get_kind(spec.model_class)
    if not kind.takes_cutoff:
        return [{}]
    layers = exit_layers(spec)
    calls = [{"cutoff_layers": layers}] + [{"cutoff_layers": [layer]} for layer in layers]
    if kind.takes_compression:
        calls.append({"cutoff_layers": layers, "compress_ratio": 2, "compress_layers": [layers[len(layers) // 2]]})
    return calls


def evaluate(directory: Path, n: int = 600) -> dict[str, dict[str, float]]:
    """Held-out quality per scored exit, keyed "score" or "score_l{L}_h{H}" (plus " compressed" for the requests
    with a compression stage): std of the raw scores over all pairs, and AUC of the pairs that hold every query word
    against those that hold none ("auc") and against all others ("auc_vs_rest"). The pairs are drawn like the training
    pairs (the passage length recorded in training.json) from another seed."""
    from ..reference import FlagAutoReranker

    recipe = json.loads((Path(directory) / "training.json").read_text())["recipe"]
    pairs, grades = relevance_pairs(n, HELD_OUT_SEED, recipe["max_sentences"])
    g = np.asarray(grades)
    ends = (g == 0) | (g == 1)
    result: dict[str, dict[str, float]] = {}
    with one_thread():
        reranker = FlagAutoReranker.from_finetuned(str(directory), batch_size=64)
        kind = get_kind(reranker.spec.model_class)
        for call in evaluation_calls(reranker.spec):
            request = build_request(kind, reranker.spec, **call)
            suffix = " compressed" if request.compress_layers else ""
            names = [name + suffix for name in request.output_names]
            if all(name in result for name in names):
                continue  # the same exits, already measured
            scores = np.atleast_2d(reranker.compute_score_array(pairs, **call))
            for name, row in zip(names, scores):
                result[name] = {"std": round(float(row.std()), 3), "auc": round(auc(row[ends], g[ends] == 1), 4),
                                "auc_vs_rest": round(auc(row, g == 1), 4)}
    return result
