"""The data flows one way: no import cycles anywhere in masteer, and no compiler stage imports a later one.

Every import counts, the ones inside functions too (they are how cycles hide). Stages, in order:
``common`` (may be used by all), ``samples``, ``capture``, ``strategies``, ``program``, ``lowering``,
``evaluation``;
the drivers at the top of ``compiler/`` may import any stage; ``runtime`` never imports ``compiler``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"masteer.runtime": REPO / "runtime", "masteer.compiler": REPO / "compiler"}
STAGES = ("common", "samples", "capture", "strategies", "program", "lowering", "evaluation")
MAX_TOP_LEVEL_MODULES = 8


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package] + parts)] = path
    return found


def runtime_nodes(tree: ast.AST):
    """Every node, except what sits under ``if TYPE_CHECKING:`` (never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every masteer module ``name`` imports, wherever in the file the import sits."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    out.add(f"{target}.{alias.name}")
                elif target in known:
                    out.add(target)
    return out - {name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def stage(name: str) -> int | None:
    """The stage rank of a compiler module; None for the drivers at the top and the package itself."""
    parts = name.split(".")
    if parts[:2] != ["masteer", "compiler"] or len(parts) < 3:
        return None
    return STAGES.index(parts[2]) if parts[2] in STAGES else None


def test_there_is_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles (function-level imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_stage_imports_a_later_stage_and_the_runtime_never_imports_the_compiler():
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            if name.startswith("masteer.runtime") and target.startswith("masteer.compiler"):
                wrong.append(f"{name} -> {target}")
            here, there = stage(name), stage(target)
            if here is not None and (there is None and target != "masteer.compiler" and
                                     target.startswith("masteer.compiler") or
                                     there is not None and there > here):
                wrong.append(f"{name} (stage {STAGES[here]}) -> {target}")
    assert not wrong, "imports against the stage order:\n" + "\n".join(sorted(wrong))


def test_the_top_of_the_compiler_holds_few_modules_and_every_stage_folder():
    root = PACKAGES["masteer.compiler"]
    top = sorted(p.name for p in root.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert all((root / s / "__init__.py").exists() for s in STAGES)


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected


def test_a_function_level_import_counts_and_a_type_checking_one_does_not(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from .other import g\n    return g\n")
    assert imports_of("masteer.compiler.mod", path, {"masteer.compiler.other"}) == {"masteer.compiler.other"}
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .other import g\n")
    assert imports_of("masteer.compiler.mod", path, {"masteer.compiler.other"}) == set()
