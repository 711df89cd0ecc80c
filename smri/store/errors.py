"""What goes wrong opening or writing a store: said before writing where it can be
(`check_room`), as one error naming the store where it cannot (`write_error`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py

from smri.errors import DataError


def h5_reason(exc: OSError) -> str:
    """HDF5's error in a few words (a truncated file, no signature, its first clause)."""
    text = str(exc)
    if "truncated" in text:
        return "file is truncated"
    if "signature" in text or "file signature" in text:
        return "no HDF5 signature"
    return text.split("(")[0].strip() or type(exc).__name__


def check_room(path: Path, tmp: Path, nbytes: int) -> None:
    """DataError when the folder of `tmp` has less free space, or this process may write less
    to one file (ulimit -f), than `nbytes`: said before writing, as a failed write inside HDF5
    cannot be recovered from (h5py crashes when it frees the file's objects afterwards)."""
    import resource

    need = nbytes + (16 << 20)
    try:
        st = os.statvfs(Path(tmp).parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    gib = f"about {need / 2**30:,.2f} GiB"
    if free is not None and need > free:
        raise DataError(
            f"{path}: the store needs {gib} and {Path(tmp).parent} has {free / 2**30:,.2f} GiB "
            "free; free some space, write it elsewhere, or compress it (--compression gzip-1)"
        )
    if limit != resource.RLIM_INFINITY and need > limit:
        raise DataError(
            f"{path}: the store needs {gib}, more than this process may write to one file "
            f"({limit / 2**30:,.2f} GiB: ulimit -f)"
        )


class StoreWriteError(OSError):
    """HDF5 failed to write the store (a full disk, a file size limit). The process should end
    soon after reporting it: h5py crashes when it later frees the file's objects."""

    unrecoverable = True


def write_error(exc: BaseException, path: Path) -> StoreWriteError | None:
    """`exc` as a StoreWriteError naming `path` (not the hidden partial file) when it is HDF5's
    report of a failed write ("... errno = 28, error message = 'No space left ...'")."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    code = getattr(exc, "errno", None)
    found = re.search(r"errno = (\d+)", str(exc))
    if found:
        code = int(found.group(1))
    if not code or (not found and not isinstance(exc, OSError)):
        return None
    return StoreWriteError(code, os.strerror(code), str(path))


def is_locked(exc: OSError) -> bool:
    """HDF5's refusal of a file another process holds ("unable to lock file, errno = 11").

    Not a bare "lock": a truncated file's message names "sblock->base_addr".
    """
    return "unable to lock file" in str(exc)


class StoreChanged(DataError):
    """The store at a path is no longer the file a command planned on (replaced meanwhile)."""


class LockedError(DataError):
    """Another process holds the file open for writing."""


def open_error(path: Path, exc: OSError) -> DataError:
    """The DataError for an HDF5 file that would not open: locked by a writer, or damaged."""
    if is_locked(exc):
        return LockedError(
            f"{path}: another process is writing this file (it is locked); wait for it or stop it"
        )
    return DataError(f"{path}: damaged ({h5_reason(exc)})")


def create_h5(path: Path, **kwargs: Any) -> h5py.File:
    """A new HDF5 file at `path` (h5py's options); LockedError when another process holds it."""
    try:
        return h5py.File(path, "w", **kwargs)
    except OSError as exc:
        if is_locked(exc):
            raise open_error(path, exc) from None
        raise
