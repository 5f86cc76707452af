"""The seams docs/architecture.md describes hold: generic modules never name a reranker kind (what differs per kind is
data on kinds.Kind), and the runtime never imports the exporter."""

from __future__ import annotations

import ast
from pathlib import Path

from rerank_runtime.kinds import KINDS
from rerank_runtime.spec import MODEL_CLASSES

REPO = Path(__file__).resolve().parent.parent
KIND_NAMES = {"ENCODER", "DECODER", "LAYERWISE", "LIGHTWEIGHT"}
# where the kinds are defined and pinned: the model class strings, the Kind table, the four public classes
KIND_HOMES = {"runtime/spec.py", "runtime/kinds.py", "runtime/rerankers.py"}
GENERIC = [p for folder in ("runtime", "export", "serve") for p in sorted((REPO / folder).glob("*.py"))]


def names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    found |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return found | (strings & set(MODEL_CLASSES))


def test_generic_modules_do_not_branch_on_the_kind() -> None:
    offenders = {str(p.relative_to(REPO)): sorted(names(p) & (KIND_NAMES | set(MODEL_CLASSES)))
                 for p in GENERIC if str(p.relative_to(REPO)) not in KIND_HOMES}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert set(KINDS) == set(MODEL_CLASSES)


def test_the_runtime_never_imports_the_exporter() -> None:
    for path in sorted((REPO / "runtime").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not any(m.startswith("rerank_export") for m in imported), path
