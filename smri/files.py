"""Reading files the user names: only regular files (or links to them) are opened.

A FIFO named like a modality file blocks the reader forever (and Ctrl-C with it), a link to
/dev/zero or /dev/urandom never ends; smri refuses them before opening, naming what they are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from smri.errors import DataError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: Path) -> str | None:
    """What `path` (links followed) is when it exists and is neither a regular file nor a
    folder: "a FIFO (named pipe)", "a character device", ...; else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a link loop, no permission: the caller's message
        return None
    return next((kind for test, kind in _KINDS if test(mode)), None)


def check_regular(path: Path) -> Path:
    """`path`, after a DataError naming it when it is a FIFO, a device or a socket."""
    kind = special_kind(path)
    if kind is not None:
        raise DataError(
            f"{path}: is {kind}, not a regular file; smri reads only regular files (or links "
            "to them)"
        )
    return Path(path)


FileState = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def file_state(fd: int | Path) -> FileState:
    """Which file an open descriptor (or a path, links followed) reads and which version of
    it: device, inode, size, modification and change time (ns). Two reads of one path that
    see different states read different files (replaced by a rename) or a file written in
    between."""
    st = os.fstat(fd) if isinstance(fd, int) else os.stat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def changed_message(path: Path) -> str:
    """What to say of a file that changed while smri read it."""
    return (
        f"{path}: changed while smri read it (its size, modification time or inode differ "
        "between two reads), so its header and voxels could come from different versions; "
        "not used: run again once nothing writes to it"
    )
