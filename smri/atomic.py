"""Atomic file writes: write a hidden file beside the target, then rename it into place.

Readers see the old file or the new one, never a part of either, and a killed or failed write
leaves at most a hidden ``.NAME.partial`` beside the target (synth and preprocess recognise and
remove those). `durable` also flushes the data and the rename to the disk (fsync), for files
whose loss after a crash would cost hours (training checkpoints).

`OutputLock` keeps two smri processes from writing one output (a store, a run folder, ...) at
once: the second is refused before it touches a byte; `check_not_input` keeps an output from
replacing, or landing inside, what the command reads.
"""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from smri.errors import ConfigError, DataError

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"


class OutputLocked(DataError):
    """Another smri process is writing the same output."""


class OutputLock:
    """An exclusive lock on an output path, held by this process until `release` (or its end).

    The lock is `fcntl.flock` on a hidden ``.NAME.lock`` file beside the output (a file or a
    folder): the kernel drops it when the process ends, however it ends, so a killed run never
    leaves a stale lock behind, and no process ids need checking. The lock file is removed on
    release; a process that opened it just before checks, once it holds the lock, that the
    name still leads to the file it locked, and starts again if not.
    """

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path
        self.lock_file = path.parent.resolve() / f".{path.name}{LOCK_SUFFIX}"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock; OutputLocked naming the output when another process holds it."""
        if self._fd is not None:
            return self
        while True:
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:  # a read-only folder: named as the output asked for
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f" (pid {holder})" if holder else ""
                raise OutputLocked(
                    f"{self.path}: another smri process{who} is writing it; wait for it to "
                    "finish or stop it"
                ) from None
            if _same_file(fd, self.lock_file):
                break
            os.close(fd)  # removed (and maybe made again) by its holder meanwhile: try again
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: named as the output asked for
            self.lock_file.unlink(missing_ok=True)  # still held: no other process uses it
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing if it is not held)."""
        if self._fd is None:
            return
        try:
            self.lock_file.unlink(missing_ok=True)  # while still holding it: see the class doc
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def partial_path(path: Path, *, unique: bool = False) -> Path:
    """The hidden name beside `path` that a write goes to first (same file system).

    With `unique`, a random part keeps concurrent writers of the same target apart.
    """
    path = Path(path)
    tag = f".{uuid.uuid4().hex[:8]}" if unique else ""
    return path.with_name(f".{path.name}{tag}{PARTIAL_SUFFIX}")


def check_not_input(
    output: Path,
    inputs: dict[str, Path | None] | list[tuple[str, Path | None]],
    option: str,
    *,
    folder: bool = False,
    inside: bool = True,
    holding: bool = False,
) -> None:
    """ConfigError naming `option` when writing `output` would replace one of `inputs` (role,
    such as "INPUT" or "--labels", and path), or (with `inside`) land inside an input folder,
    or (with `holding`: an output folder replaced whole) hold an input.

    Paths are compared resolved (``..``, links). A file output that is a link is itself
    replaced (writes rename over the name), so only its folder is resolved; an output
    `folder` is written through its links, so it is resolved whole.
    """
    out = Path(output).resolve() if folder else Path(output).parent.resolve() / Path(output).name
    pairs = inputs.items() if isinstance(inputs, dict) else inputs
    for role, given in pairs:
        if given is None:
            continue
        src = Path(given).resolve()
        if out == src:
            problem = f"is {role} {given}"
        elif inside and src.is_dir() and out.is_relative_to(src):
            problem = f"is inside {role} {given}"
        elif holding and out.is_dir() and src.is_relative_to(out):
            problem = f"holds {role} {given}"
        else:
            continue
        raise ConfigError(
            f"{output} {problem}, which this command reads; write it elsewhere", option=option
        )


def remove_unique_partials(path: Path) -> None:
    """Delete the ``partial_path(path, unique=True)`` files that killed runs left beside `path`.

    Call it only while holding `path`'s `OutputLock`: no other smri process is writing them.
    """
    path = Path(path)
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.????????{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def publish(tmp: Path, path: Path, *, durable: bool = False) -> None:
    """Rename the finished file `tmp` over `path`; with `durable`, fsync the data and the
    rename first and after."""
    if durable:
        _fsync(tmp)
    os.replace(tmp, path)
    if durable:
        _fsync(Path(path).parent, folder=True)


def _fsync(path: Path, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not folder:  # some file systems refuse fsync on a folder; the data is safe already
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path for `path`'s new content: renamed into place when the block ends
    without an exception, removed when it raises."""
    tmp = partial_path(path)
    try:
        yield tmp
        publish(tmp, path, durable=durable)
    except OSError as exc:
        raise naming(exc, path, tmp) from None
    finally:
        tmp.unlink(missing_ok=True)


# errno of a failed write that names no file (a full disk, a file size limit, a quota)
WRITE_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)


def naming(exc: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """`exc`, or for a write that failed on `tmp` or named no file (``write()`` of a full disk
    does not) the same error naming `path`: the file the user asked for, not a hidden one."""
    hidden = tmp is not None and exc.filename in (str(tmp), tmp)
    if exc.errno and (hidden or (exc.filename is None and exc.errno in WRITE_ERRORS)):
        return OSError(exc.errno, os.strerror(exc.errno), str(path))
    return exc


@contextmanager
def atomic_open(path: Path, mode: str = "w", *, durable: bool = False, **kw: Any) -> Iterator[IO]:
    """`open(path, mode, **kw)` for writing, atomically: see `atomic_path`."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, **kw) as fh:
        yield fh


def write_text(path: Path, text: str) -> None:
    """Atomically replace `path`'s content with `text` (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
