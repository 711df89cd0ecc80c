"""Atomic file writes: write a hidden file beside the target, then rename it into place.

Readers see the old file or the new one, never a part of either, and a killed or failed write
leaves at most a hidden ``.NAME.partial`` beside the target (synth and preprocess recognise and
remove those). `durable` also flushes the data and the rename to the disk (fsync), for files
whose loss after a crash would cost hours (training checkpoints).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path, *, unique: bool = False) -> Path:
    """The hidden name beside `path` that a write goes to first (same file system).

    With `unique`, a random part keeps concurrent writers of the same target apart.
    """
    path = Path(path)
    tag = f".{uuid.uuid4().hex[:8]}" if unique else ""
    return path.with_name(f".{path.name}{tag}{PARTIAL_SUFFIX}")


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
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: Path, mode: str = "w", *, durable: bool = False, **kw: Any) -> Iterator[IO]:
    """`open(path, mode, **kw)` for writing, atomically: see `atomic_path`."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, **kw) as fh:
        yield fh


def write_text(path: Path, text: str) -> None:
    """Atomically replace `path`'s content with `text` (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
