"""Atomic file writes: readers (and a later run after a crash) see the old file or the new one, whole."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux ``/proc``).

    Elsewhere it is read by setting and restoring it, which is only racy against threads that create files in the
    same instant."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yields a temporary file beside ``path``; when the block ends normally it is fsynced and renamed over
    ``path``, and the folder is fsynced so the rename survives a power cut. On an exception (or a kill) the final
    name is untouched; the temporary file is hidden (dot name) and removed where Python still can.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask): ``mkstemp`` creates
    0600, which would make a shared store's index or a run's checkpoints unreadable to the group that reads the
    rest of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
