"""Where numba keeps its compiled-kernel cache when the package folder is read-only.

``@njit(cache=True)`` needs a writable cache: next to the source, or the user's
cache folder. With a read-only install and no writable HOME numba refuses at
import ("no locator available"); then the cache goes to a per-user folder under
the system temporary directory, with a warning. Importing this module does the
check; the modules with cached kernels import it before numba.
"""

from __future__ import annotations

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


def ensure_writable_cache() -> None:
    if os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return
    root = Path(__file__).resolve().parents[1]
    if all(_writable(root / pkg / "__pycache__") for pkg in KERNEL_PACKAGES):
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
