"""What every API function shares: the path and log types, quiet output, progress bars, and the
refusal to write into a run folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from smri.errors import ConfigError

PathLike = str | os.PathLike
Log = Callable[[str], None]


def silent(_line: str) -> None:
    """The log of quiet calls."""


def bars(progress: bool | None, quiet: bool) -> bool:
    """Whether to show progress bars: never when quiet; by default when stderr is a terminal."""
    if quiet:
        return False
    return sys.stderr.isatty() if progress is None else progress


def refuse_run_folder(where: Path, why: str) -> None:
    """ConfigError (--out) when `where` is a run or fold folder: `why` says what would happen."""
    from smri.model_io import RUN_FILES

    run_files = [n for n in RUN_FILES if (where / n).exists()]
    if run_files:
        raise ConfigError(
            f"{where} is an smri run folder ({', '.join(run_files)}); {why}; choose another "
            "--out (e.g. a new subfolder)",
            option="--out",
        )
