"""Layering of the packages: who may import whom (checked on the source, no imports executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "lattice", "rates", "kmc", "md_reference", "workflows")
# what each package may import from the project (besides itself)
ALLOWED = {
    "common": set(),
    "lattice": {"common"},
    "rates": {"common", "lattice"},
    "md_reference": {"common", "lattice", "rates"},
    "kmc": {"common", "lattice", "rates"},
    "workflows": {"common", "lattice", "rates", "kmc", "md_reference"},
}
# the command line is the one place where kmc reaches the MD side and the workflows
CLI_EXTRA = {"kmc/cli.py": {"md_reference", "workflows"}, "kmc/compare.py": {"workflows"}}


def project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top in PACKAGES:
                out.add(top)
    return out


def test_packages_import_only_downwards():
    bad = []
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            allowed = ALLOWED[pkg] | {pkg} | CLI_EXTRA.get(rel, set())
            extra = project_imports(f) - allowed
            if extra:
                bad.append(f"{rel} imports {sorted(extra)}")
    assert not bad, "\n".join(bad)


def test_md_reference_never_imports_kmc():
    for f in (REPO / "md_reference").rglob("*.py"):
        assert "kmc" not in project_imports(f), f


def test_package_list_is_complete():
    tomllib = pytest.importorskip("tomllib")

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(f) for pkg in PACKAGES for f in (REPO / pkg).rglob("__init__.py")}
    assert listed == on_disk  # every package and subpackage is installed


SUBLAYERS = {  # inside md_reference: what each subpackage may import of its siblings
    "md_reference.md": set(),
    "md_reference.analysis": {"md_reference.md"},
    "md_reference.neb": {"md_reference.md"},
    "md_reference.ml": {"md_reference.md", "md_reference.analysis", "md_reference.neb"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_graph() -> dict[str, set[str]]:
    """Every import (top level or inside functions) between the project's modules."""
    files = {module_name(f): f for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py")}
    graph = {}
    for mod, f in files.items():
        tree = ast.parse(f.read_text(), filename=str(f))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                cands = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for c in cands:
                if c in files and c != mod:
                    deps.add(c)
        graph[mod] = deps
    return graph


def test_md_reference_subpackages_import_only_downwards():
    bad = []
    for mod, deps in module_graph().items():
        sub = ".".join(mod.split(".")[:2])
        if sub not in SUBLAYERS:
            continue
        for d in deps:
            dsub = ".".join(d.split(".")[:2])
            if dsub in SUBLAYERS and dsub != sub and dsub not in SUBLAYERS[sub]:
                bad.append(f"{mod} imports {d}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = module_graph()
    # package __init__ modules re-export their children; an edge child -> parent package is not a cycle
    for mod in graph:
        graph[mod] = {d for d in graph[mod] if not mod.startswith(d + ".")}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
