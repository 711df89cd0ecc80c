"""nibabel's log lines and warnings about a header, collected while smri reads a file.

nibabel logs what it finds wrong in a header (and raises the same text when it cannot go on),
and warns of some oddities (an extension size that is not a multiple of 16); printed by its own
handler they would stand beside smri's one-line message, once per reading. While smri reads a
file (`nibabel_notes`) they are collected instead: folded into the error, or a warning.

Nothing changes at import. The logger filter and the warnings hook are installed when the first
reading starts, on any thread, and removed when the last one ends; meanwhile the log lines of
threads that are not reading, and every other warning, pass through as before.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NIBABEL_LOG = logging.getLogger("nibabel.global")  # nibabel's own logger (nibabel.imageglobals)
_NOTES = threading.local()


class _Collect(logging.Filter):
    """Divert nibabel's records to the notes of the reading in progress on this thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        notes = getattr(_NOTES, "notes", None)
        if notes is None:
            return True
        if record.levelno >= logging.WARNING and record.getMessage() not in notes:
            notes.append(record.getMessage())
        return False


def _divert_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """nibabel's warnings (an odd extension size, ...) go to the notes of the reading in
    progress on this thread, like its log lines; any other warning is shown as before."""
    notes = getattr(_NOTES, "notes", None)
    if notes is not None and "nibabel" in str(filename):
        if str(message) not in notes:
            notes.append(str(message))
        return
    _HOOKS.show(message, category, filename, lineno, file, line)


class _Hooks:
    """The filter on nibabel's logger and the warnings hook, held while any thread reads.

    Counted under a lock: the first reading installs them, the last one removes them. A hook
    that someone else replaced meanwhile (`warnings.catch_warnings` on another thread) is left
    to them; put back by them later, it only passes warnings on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings = 0
        self._filter = _Collect()
        self.show: Callable[..., None] = warnings.showwarning  # the hook found on install

    def enter(self) -> None:
        with self._lock:
            self._readings += 1
            if self._readings > 1:
                return
            NIBABEL_LOG.addFilter(self._filter)
            if warnings.showwarning is not _divert_warning:
                self.show = warnings.showwarning
                warnings.showwarning = _divert_warning

    def leave(self) -> None:
        with self._lock:
            self._readings -= 1
            if self._readings > 0:
                return
            NIBABEL_LOG.removeFilter(self._filter)
            if warnings.showwarning is _divert_warning:
                warnings.showwarning = self.show


_HOOKS = _Hooks()


@contextmanager
def nibabel_notes() -> Iterator[list[str]]:
    """Collect (not print) what nibabel logs or warns on this thread while the block runs."""
    outer = getattr(_NOTES, "notes", None)
    notes: list[str] = [] if outer is None else outer
    _HOOKS.enter()
    _NOTES.notes = notes
    try:
        yield notes
    finally:
        _NOTES.notes = outer
        _HOOKS.leave()
