"""How the library's messages reach whoever called it: a `log` callable, one line at a time.

Library code hands each line it has to say to the `log` it was given: the commands print them
(each command as it always has), a Python caller may pass its own (``log=print``,
``log=lines.append``). A line that is a warning is marked with `warning` (still a `str`, so
any log prints it as it is). The Python API's default, `python_log`, does what Python's logging
guide asks of a library: warnings through `warnings.warn` (category `SmriWarning`, so
``warnings.filterwarnings`` and ``pytest -W`` act on them), info lines (per-epoch lines, what
is being done) to the ``smri`` logger at INFO, shown once the program configures logging
(``logging.basicConfig(level=logging.INFO)``). Importing smri adds no handler and no filter.
"""

from __future__ import annotations

import logging
import warnings

LOGGER = logging.getLogger("smri")
WARNING_PREFIX = "warning: "


class SmriWarning(UserWarning):
    """A warning of smri: a patient skipped, a volume without contrast, a model whose saliency
    lies outside the tumour, a setting worth changing."""


class WarningLine(str):
    """A message line that is a warning: a `str`, so any `log` prints it unchanged."""

    __slots__ = ()


def warning(line: str) -> WarningLine:
    """`line`, marked as a warning for `python_log` (the text itself is not changed)."""
    return WarningLine(line)


def python_log(line: str) -> None:
    """The Python API's default `log`: a `warning` line through ``warnings.warn`` as an
    `SmriWarning` (without its leading "warning: "), any other line to the ``smri`` logger
    at INFO."""
    if isinstance(line, WarningLine):
        warnings.warn(line.removeprefix(WARNING_PREFIX), SmriWarning, stacklevel=2)
    else:
        LOGGER.info(line)
