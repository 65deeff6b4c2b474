"""Atomic file writes: a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np


def jsonable(obj):
    """Recursively convert NumPy arrays and scalars (and inf/NaN to None) for ``json.dump``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path, obj, indent: int | None = 1) -> None:
    """JSON (NaN/inf as null) written atomically."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=indent) + "\n")


def read_text_file(path, what: str) -> str:
    """Text of a regular UTF-8 file (a leading byte-order mark dropped), or ValueError naming the file.

    A missing path, a directory, a FIFO or device, unreadable or non-UTF-8 bytes
    each get their own one-line reason.
    """
    import stat as _stat  # noqa: PLC0415

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ValueError(f"{what} {str(p)!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{what} {str(p)!r} cannot be read ({exc.strerror or exc})") from None
    if _stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what} {str(p)!r} is a directory, not a file")
    if not _stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {str(p)!r} is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {str(p)!r} cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {str(p)!r} is not UTF-8 text (byte {exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text
