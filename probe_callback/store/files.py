"""Atomic file writes: a reader (or a crash) never sees half a file.

Example:
    >>> import tempfile
    >>> path = atomic_write_text(Path(tempfile.mkdtemp()) / "state" / "a.json", "{}")
    >>> path.read_text()
    '{}'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in its folder, fsync and ``os.replace``; returns the path.

    The folder is created if needed. The file gets the mode ``open()`` would give it (0666 less the
    umask), not the temp file's 0600. Temp files are named ``.<name>.<random>.tmp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
