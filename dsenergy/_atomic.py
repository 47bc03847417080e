"""Atomic file writes shared by the records, caches, checkpoints and result tables."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def _file_mode() -> int:
    """Return the mode a newly created file gets: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None], sync: bool = False) -> None:
    """Write ``path`` through ``write(stream)`` on a temporary file in the same folder, then rename it.

    Readers see the old file or the complete new one, never a partial file. The new file gets the
    permissions of an ordinary new file (``mkstemp`` would leave it readable by its owner only).
    With ``sync`` the data is flushed to disk before the rename. The folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            if sync:
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` with :func:`write_atomically`."""
    write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))
