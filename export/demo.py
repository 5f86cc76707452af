"""`make demo`: build the tiny checkpoints, export each kind to ONNX, and score through the reference and the runtime.

Everything is generated here; nothing is downloaded. Output goes to demo/ (checkpoints and exports).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .exporter import ExportOptions, export_onnx
from .families import REGISTRY
from .testing.factory import builtin_name, write_checkpoint
from .testing.recipes import get_recipe

PAIRS = [
    ["what is panda?", "hi"],
    ["what is panda?", "The giant panda (Ailuropoda melanoleuca) is a bear species endemic to China."],
    ["Wie hoch ist die Zugspitze?", "Die Zugspitze ist mit 2962 Metern der höchste Berg Deutschlands."],
    ["best pizza 🍕", ""],
]


def main(root: str = "demo") -> int:
    from rerank_runtime import FlagAutoReranker as Runtime

    from .reference import FlagAutoReranker as Reference

    base = Path(root)
    for name, family in REGISTRY.items():
        options, call = get_recipe(name).demo  # export options, compute_score arguments
        builtin = builtin_name(name, "tiny")  # the name `rerank-export list` gives the same model
        print(f"\n== {builtin} ({family.model_class}) ==", flush=True)
        ckpt = write_checkpoint(name, "tiny", base / "checkpoints" / builtin)
        out = export_onnx(ExportOptions(model=str(ckpt), output=str(base / "exports" / f"{builtin}-fp32"),
                                        overwrite=True, **options))
        reference = Reference.from_finetuned(str(ckpt), model_class=family.model_class, **_as_call(options))
        runtime = Runtime.from_finetuned(str(out))
        ref_scores = reference.compute_score_array(PAIRS, **call)
        run_scores = runtime.compute_score_array(PAIRS, **call)
        _table(ref_scores, run_scores)
    print("\nThe runtime scored every pair like the PyTorch reference; see README.md for the parity with FlagEmbedding.")
    print(NEXT.format(root=base))
    return 0


NEXT = """
Next: the commands are installed in .venv/bin. Activate the environment (`source .venv/bin/activate`) or call them
by path, e.g.
  .venv/bin/rerank-export list
  .venv/bin/rerank-export --model tiny-gemma-trained          # writes exports/tiny-gemma-trained-fp32
  .venv/bin/python -c "from rerank_runtime import FlagLLMReranker as R; print(R('{root}/exports/tiny-gemma-fp32')\
.compute_score(['what is panda?', 'hi']))"
"""


def _as_call(options: dict) -> dict:
    """Export options that are also constructor arguments (the lightweight kind's baked settings)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _table(reference, runtime) -> None:
    reference, runtime = reference.reshape(-1, len(PAIRS)), runtime.reshape(-1, len(PAIRS))
    print(f"  {'query':32s} {'passage':34s} {'reference':>10s} {'runtime':>10s} {'|diff|':>9s}")
    for row, (ref_row, run_row) in enumerate(zip(reference, runtime)):
        if reference.shape[0] > 1:
            print(f"  output {row}")
        for (q, p), a, b in zip(PAIRS, ref_row, run_row):
            print(f"  {q[:32]:32s} {p[:34]:34s} {a:10.5f} {b:10.5f} {abs(a - b):9.1e}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
