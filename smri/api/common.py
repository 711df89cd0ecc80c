"""What every API function shares: `public` (its arguments checked first, its errors worded for
Python), the path and log types, quiet output, progress bars, the refusal to write into a run
folder.

Library messages name options as the command line spells them (``--overwrite``, ``smri train
--resume RUN``). An error leaving a public function is reworded for Python
(``overwrite=True``, ``smri.train(resume='RUN')``) by `python_message`, the one place that does;
the CLI runs its commands inside `command_line()`, where messages stay as written and
`smri.cli.common.handle_errors` names the option.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from smri.api.checks import RULES, check_arguments
from smri.errors import ConfigError, RunInterrupted, SmriError, keyword_of

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
    from smri.model_io import run_files

    held = run_files(where)  # a folder `smri plot` wrote into is no run
    if held:
        raise ConfigError(
            f"{where} is an smri run folder ({', '.join(held)}); {why}; choose another "
            "--out (e.g. a new subfolder)",
            option="--out",
        )


F = TypeVar("F", bound=Callable[..., Any])
_CLI: ContextVar[bool] = ContextVar("smri_command_line", default=False)
# keyword -> annotations it has across the public functions (a flag: only ever "bool")
KINDS: dict[str, set[str]] = {}
COMMANDS = ("synth", "preprocess", "info", "show", "models", "train", "evaluate", "explain",
            "predict", "export", "plot")  # fmt: skip


@contextmanager
def command_line() -> Iterator[None]:
    """Within: errors keep the command line's wording (the CLI runs every command here)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def public(func: F) -> F:
    """An API function: its arguments checked (`smri.api.checks`) before its body runs, so a
    bad value writes nothing; an `SmriError` or `RunInterrupted` leaving it worded for Python
    (outside `command_line`)."""
    signature = inspect.signature(func)
    own = {name: str(p.annotation) for name, p in signature.parameters.items()}
    for name, kind in own.items():
        KINDS.setdefault(name, set()).add(kind)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(*args, **kwargs).arguments  # TypeError as Python words it
        try:
            check_arguments(signature, arguments)
            return func(*args, **kwargs)
        except (SmriError, RunInterrupted) as exc:
            if not _CLI.get() and len(exc.args) == 1 and isinstance(exc.args[0], str):
                exc.args = (python_message(exc.args[0], getattr(exc, "option", None), own),)
            raise

    return wrapper  # type: ignore[return-value]


# `smri CMD ARGS` in backticks, or unquoted with ARGS starting at an option or a placeholder
_QUOTED = re.compile(rf"`smri ({'|'.join(COMMANDS)})((?: [^`]*)?)`")
_BARE = re.compile(rf"(?<![\w-])smri ({'|'.join(COMMANDS)})\b((?: (?:--|[A-Z][A-Z_]+\b)[^;]*)?)")
_OPTION = re.compile(r"(?<![\w/.-])--([a-z][a-z0-9-]*)(?: ([A-Z][A-Z_]*\b|[a-z0-9][\w:.-]*))?")


def python_message(text: str, option: str | None, own: dict[str, str] | None = None) -> str:
    """`text`, written for the command line, as Python reads it: ``smri train --resume R`` ->
    ``smri.train(resume='R')``, ``--overwrite`` -> ``overwrite=True``, ``--no-amp`` ->
    ``amp=False``, ``--folds K`` -> ``folds=K``, ``--out`` -> ``out=...``. `own`: the raising
    function's keywords and their annotations (a flag is annotated bool). A ConfigError's
    keyword (from `option`) leads when the text does not name it."""
    own = own or {}
    text = _QUOTED.sub(lambda m: f"`{_call(m[1], m[2], own)}`", text)
    text = _BARE.sub(lambda m: _call(m[1], m[2], own), text)
    text = _OPTION.sub(lambda m: _keyword(m[1], m[2], own), text)
    if option:
        keyword = keyword_of(option)
        if not re.search(rf"(?<![\w.]){keyword}=", text):
            text = f"{keyword}: {text}"
    return text


def _is_flag(name: str, own: dict[str, str]) -> bool:
    """Whether `name` is a flag: in the raising function, else in every function that has it."""
    if name in own:
        return own[name] == "bool"
    return KINDS.get(name, set()) == {"bool"}


def _keyword(option: str, word: str | None, own: dict[str, str]) -> str:
    """One option, and the word after it (a placeholder such as K, a value such as cpu, or
    prose), as a keyword argument."""
    name = keyword_of(f"--{option}")
    after = f" {word}" if word else ""
    if option.startswith("no-") or _is_flag(name, own):
        return f"{name}={not option.startswith('no-')}{after}"
    if word and (word.isupper() or re.fullmatch(r"-?[\d.]+(?:e-?\d+)?", word)):
        return f"{name}={word}"
    rule = RULES.get(name)
    if word and word in _VALUES.get(name, (rule and rule.choices) or ()):
        return f"{name}={word!r}"
    return f"{name}=...{after}"


_VALUES = {"device": ("auto", "cpu", "cuda")}  # values of options without choices


def _call(command: str, args: str, own: dict[str, str]) -> str:
    """``smri CMD ARGS`` as a call: ``smri.CMD(POSITIONAL, keyword=value)``."""
    words, parts = args.split(), []
    while words:
        word = words.pop(0)
        if word.startswith("--"):
            name = keyword_of(word)
            if word.startswith("--no-") or _is_flag(name, own) or not words:
                parts.append(f"{name}={not word.startswith('--no-')}")
                continue
            value = words.pop(0)
            parts.append(f"{name}={value if value.isupper() else repr(value)}")
        elif word != "...":
            parts.append(word if word.isupper() else repr(word))
    return f"smri.{command}({', '.join(parts)})" if parts else f"smri.{command}"
