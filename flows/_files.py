"""Atomic text-file writes for the pipeline's own files (report, histories, done records)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["write_atomic"]


def _umask() -> int:
    # os.umask can only be read by setting it, so set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[TextIO], None], *, newline: str | None = None) -> None:
    """Write a UTF-8 text file through a hidden temporary file renamed over ``path``.

    A reader sees the old file or the new one, never a part, even if the
    process is killed. The file gets the usual ``0o666 & ~umask`` permissions
    instead of the ``0o600`` of ``tempfile.mkstemp``.

    Args:
        path: The file to write; its folder is created if missing.
        write: Called with the open temporary file.
        newline: Passed to ``open``; use ``""`` for the csv module. Defaults to None.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8", newline=newline) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
