"""The package's layers, read from its imports: every arrow points down, none runs in a circle.

Layers, bottom first: ``model`` (with its private ``model.loop``), ``data``, ``analysis``,
``training`` (these four import nothing of one another), ``tasks``, ``cli``. The package's
face (``hmrnn/__init__.py``, ``__main__``) may import anything. Imports inside functions
count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hmrnn"
MAY_IMPORT = {
    "model": set(),
    "data": set(),
    "analysis": set(),
    "training": set(),
    "tasks": {"model", "data", "analysis", "training"},
    "cli": {"model", "data", "analysis", "training", "tasks"},
}


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports() -> dict[str, set[str]]:
    """Every hmrnn module -> the hmrnn modules it imports (``from pkg import sub`` counts
    as importing ``pkg.sub`` when ``sub`` is a module)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        module = ".".join(parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                subs = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
                targets.update(subs or [base])
        graph[module] = {t for t in targets if t.split(".")[0] == "hmrnn" and t != module}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def test_every_import_points_down_a_layer() -> None:
    upward = [
        f"{module} ({_layer(module)}) imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if _layer(module) is not None and _layer(target) not in (None, _layer(module))
        and _layer(target) not in MAY_IMPORT[_layer(module)]  # type: ignore[index]
    ]
    assert upward == []


def test_the_time_loop_is_private_to_the_model_library() -> None:
    outside = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if target.startswith("hmrnn.model.loop") and not module.startswith("hmrnn.model")
    ]
    assert outside == []


def test_no_import_cycle() -> None:
    graph = _imports()
    edges = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []
