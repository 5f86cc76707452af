"""Measure the trained built-in checkpoints: training time and held-out quality of every exit, as JSON.

    python -m rerank_export.testing.measure --sizes tiny mid --out benchmarks/results/trained-checkpoints.json

Trains what the cache does not hold yet (RERANK_CACHE, default ~/.cache/rerank), then scores held-out pairs of the
synthetic task (training.evaluate). The acceptance bar: every exit spreads its scores (std >= 1 logit) and separates
the pairs that hold every query word from those that hold none (AUC >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from ..families import REGISTRY
from .factory import SIZES, builtin_checkpoint, builtin_name
from .training import evaluate

MIN_STD, MIN_AUC = 1.0, 0.9


def measure(family: str, size: str) -> dict[str, Any]:
    directory = builtin_checkpoint(builtin_name(family, size, trained=True))
    record = json.loads((directory / "training.json").read_text())
    exits = evaluate(directory)
    passed = all(m["std"] >= MIN_STD and m["auc"] >= MIN_AUC for m in exits.values())
    return {"checkpoint": directory.name, "recipe": record["recipe"], "training": record["run"], "held_out": exits,
            "passed": passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rerank_export.testing.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--families", nargs="+", choices=sorted(REGISTRY), default=list(REGISTRY))
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "bar": {"std": MIN_STD,
                                                                                           "auc": MIN_AUC}}
    for size in args.sizes:
        for family in args.families:
            report[builtin_name(family, size, trained=True)] = result = measure(family, size)
            worst = min(result["held_out"].values(), key=lambda m: m["auc"])
            print(f"{builtin_name(family, size, trained=True)}: trained in {result['training']['cpu_seconds']} CPU s, "
                  f"worst exit AUC {worst['auc']}, std {min(m['std'] for m in result['held_out'].values())}",
                  file=sys.stderr, flush=True)
    text = json.dumps(report, indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0 if all(r["passed"] for k, r in report.items() if isinstance(r, dict) and "passed" in r) else 1


if __name__ == "__main__":
    sys.exit(main())
