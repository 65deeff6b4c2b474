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
    assert listed == set(PACKAGES)
