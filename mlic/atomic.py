"""Writing a file so that a crash (even SIGKILL or a power cut) leaves the old file or the new one,
never half of one: write a temporary file beside it, flush it to disk, rename it over the target,
then flush the folder so the rename itself is on disk."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

TEMP_PREFIX = ".tmp-"  # temporary files left by a killed writer are recognised by this prefix
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then put back
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, fsync the file, rename it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes it private (0600); give it open()'s mode
    try:
        write(temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    _fsync_folder(path.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that were killed midway; returns them."""
    stale = sorted(Path(folder).glob(f"{TEMP_PREFIX}*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
