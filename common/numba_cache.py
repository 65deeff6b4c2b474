"""Where numba keeps its compiled-kernel cache when the package folder is read-only.

``@njit(cache=True)`` needs a writable cache: next to the source, or the user's
cache folder. With a read-only install and no writable HOME numba refuses at
import ("no locator available"); then the cache goes to a per-user folder under
the system temporary directory, with a warning. Importing this module does the
check; the modules with cached kernels import it before numba.

numba keys a cached kernel on its own source file only: a kernel in
``kmc/_kernels.py`` that calls (and inlines) a kernel or constant of
``lattice/cluster_expansion.py`` would keep running the old code after an edit
of that file. So the in-tree caches carry a stamp, the hash of every source of
the kernel packages, and the caches of another stamp are deleted at import
(they are rebuilt on first use).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


KERNEL_PACKAGES = ("lattice", "rates", "kmc")
SOURCE_PACKAGES = KERNEL_PACKAGES + ("common",)
STAMP = "kernel-sources.sha256"


def kernel_sources_sha(root: Path) -> str:
    """Hash of the sources the cached kernels can depend on (every module of the kernel packages)."""
    h = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for f in sorted((root / pkg).glob("*.py")):
            h.update(f"{pkg}/{f.name}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def purge_stale_kernels(root: Path) -> int:
    """Delete the in-tree kernel caches (``*.nbi``, ``*.nbc``) made from other sources; returns how many."""
    stamp = root / "kmc" / "__pycache__" / STAMP
    sha = kernel_sources_sha(root)
    try:
        if stamp.read_text().strip() == sha:
            return 0
    except OSError:
        pass
    n = 0
    for pkg in KERNEL_PACKAGES:
        for f in list((root / pkg / "__pycache__").glob("*.nb[ic]")):
            try:
                f.unlink()
                n += 1
            except FileNotFoundError:  # another process starting at the same time removed it
                pass
    tmp = stamp.with_name(f"{STAMP}.{os.getpid()}.tmp")
    tmp.write_text(sha + "\n")
    os.replace(tmp, stamp)
    if n:
        log.info("kernel sources changed: removed %d cached kernel files (they are compiled again on first use)", n)
    return n


def ensure_writable_cache() -> None:
    if os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return
    root = Path(__file__).resolve().parents[1]
    if all(_writable(root / pkg / "__pycache__") for pkg in KERNEL_PACKAGES):
        try:
            purge_stale_kernels(root)
        except OSError as exc:  # pragma: no cover - a cache problem must not fail the import
            log.warning("could not check the kernel caches (%s)", exc)
        return
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numba"
    if _writable(home_cache):
        return
    d = Path(tempfile.gettempdir()) / f"halide-kmc-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    os.environ["NUMBA_CACHE_DIR"] = str(d)
    try:
        import sys  # noqa: PLC0415

        if "numba" in sys.modules:
            sys.modules["numba"].config.CACHE_DIR = str(d)
    except Exception:  # noqa: BLE001 - the fallback must not fail the import
        pass
    log.warning("the package folder is read-only and there is no writable cache folder: "
                "numba caches compiled kernels in %s", d)


ensure_writable_cache()
