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
