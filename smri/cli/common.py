"""Shared CLI plumbing: turning library exceptions into one-line errors with the right exit code."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from smri.errors import ConfigError, SmriError
from smri.text import one_line, terminal_text

# Errors after which the process must not tear down normally (a failed HDF5 write: h5py
# crashes when it frees the file's objects); `smri.cli.entry` ends the process at once.
UNRECOVERABLE: list[BaseException] = []


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; a user-facing problem becomes one line on stderr, never a traceback.

    `SmriError` exits 1 (data problems); `ConfigError` naming an option exits 2 (usage), as
    "Invalid value for '--option': ..." (the one place a ConfigError's option becomes CLI
    text; `smri.api.common.python_message` is Python's); Ctrl-C exits 130 after the library
    has cleaned up its temporary files. Every command runs through here, so this is where
    text from files is made safe to print: while the command runs, what it writes to stdout
    and stderr passes `terminal_text` (no escape sequence from a patient id or class name
    reaches the terminal), and its error is `one_line`.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from smri.api.common import command_line  # messages as the command line words them

        try:
            with command_line(), printable_output():
                return func(*args, **kwargs)
        except ConfigError as exc:
            if exc.option:
                raise click.BadParameter(one_line(str(exc)), param_hint=f"'{exc.option}'") from None
            raise click.UsageError(one_line(str(exc))) from None
        except SmriError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except OSError as exc:  # disk full, permissions: the user's environment, not a bug
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            if getattr(exc, "unrecoverable", False):  # a failed HDF5 write (smri.store)
                UNRECOVERABLE.append(exc)  # the console script leaves at once: see `entry`
            raise click.ClickException(one_line(f"{exc.strerror or exc}{where}")) from None
        except MemoryError:
            raise click.ClickException(f"out of memory; {OUT_OF_MEMORY}") from None
        except RuntimeError as exc:  # torch's allocators (CPU and CUDA) raise these
            text = str(exc).strip()
            if not any(s in text for s in ("can't allocate memory", "out of memory")):
                raise
            first = one_line(text.splitlines()[0][:160])
            raise click.ClickException(f"out of memory ({first}); {OUT_OF_MEMORY}") from None

    return wrapper


class TerminalStream:
    """A text stream whose writes pass `terminal_text` first: control characters other than
    newline, carriage return and tab are written escaped (``\\x1b``). Everything else is the
    stream's (encoding, isatty, flush, fileno: click and tqdm see the stream they expect)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: Any) -> Any:
        return self.stream.write(terminal_text(text) if isinstance(text, str) else text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def printable_output() -> Iterator[None]:
    """sys.stdout and sys.stderr as `TerminalStream`s while the block runs (once: nested
    commands, such as `train` calling another, keep the outer ones)."""
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, TerminalStream):
        sys.stdout = TerminalStream(sys.stdout)
    if not isinstance(sys.stderr, TerminalStream):
        sys.stderr = TerminalStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


OUT_OF_MEMORY = (
    "use a smaller --batch-size or --width, --cache none instead of ram or device, fewer "
    "--jobs or --workers, or a machine with more memory"
)


def path_option_type(**kwargs: Any) -> click.Path:
    """click.Path returning pathlib.Path."""
    from pathlib import Path

    return click.Path(path_type=Path, **kwargs)


class OutputFile(click.Path):
    """click.Path (pathlib.Path) of a file to write: refuses a path written as a folder.

    pathlib drops a trailing slash, so `out/` would silently become a file named `out`.
    """

    def __init__(self, **kwargs: Any) -> None:
        from pathlib import Path

        super().__init__(dir_okay=False, path_type=Path, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.endswith(("/", os.sep)):
            self.fail(f"{value!r} names a folder (it ends in {value[-1]}); expected a file", param,
                      ctx)  # fmt: skip
        return super().convert(value, param, ctx)


def api_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of an `smri.api` function: the commands' option defaults.

    The API takes them from the settings dataclasses, so each default is written once.
    """
    import inspect

    params = inspect.signature(func).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def quiet_option(what: str) -> Callable[[Any], Any]:
    """--quiet/-q: no progress bar and no info lines; warnings, errors and the result stay."""
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        help=f"No progress bar{what}; warnings, errors and the final line are still printed "
        "[default: off].",
    )


def quiet_writes_option(what: str) -> Callable[[Any], Any]:
    """--quiet/-q of a command that writes files and has no bar or info line: on success it
    prints nothing (not `what`), as the exit status says it worked."""
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        help=f"Print nothing on success (not {what}); errors are still printed [default: off].",
    )


F = TypeVar("F", bound=Callable[..., Any])


def cache_options(defaults: dict[str, Any]) -> Callable[[F], F]:
    """--cache and --workers of train and evaluate, with their API function's defaults."""

    def decorate(func: F) -> F:
        func = click.option(
            "--workers",
            type=setting("workers"),
            default=defaults["workers"],
            show_default=True,
            help="DataLoader workers when streaming (--cache none).",
        )(func)
        return click.option(
            "--cache",
            type=setting("cache"),
            default=defaults["cache"],
            show_default=True,
            help="Keep the store on the GPU / in RAM (auto: when it fits), or stream it (none).",
        )(func)

    return decorate


def setting(keyword: str) -> click.ParamType:
    """The click type of the API keyword `keyword`: the text parsed as its rule's kind, then
    checked by `smri.api.checks.check`, the API's own check (one rule, one message). Ranges
    and choices stay click's types, so --help shows them and shells complete them."""
    from smri.api.checks import RULES

    rule = RULES[keyword]
    if rule.choices is not None:
        return _CheckedChoice(keyword, rule.choices)
    if rule.kind is str:
        return _CheckedText(keyword)
    if rule.low is None and rule.high is None:
        return _CheckedNumber(keyword, click.INT if rule.kind is int else click.FLOAT)
    if rule.kind is int:
        return _CheckedInt(keyword, min=rule.low, max=rule.high)
    return _CheckedFloat(keyword, min=rule.low, max=rule.high, min_open=rule.low_open,
                         max_open=rule.high_open)  # fmt: skip


class _Checked:
    """convert: parse as the base type without its range check, then the API's check."""

    keyword: str
    parse: click.ParamType

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from smri.api.checks import check

        value = self.parse.convert(value, param, ctx)
        try:
            return check(self.keyword, value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class _CheckedInt(_Checked, click.IntRange):
    parse = click.INT

    def __init__(self, keyword: str, **bounds: Any) -> None:
        super().__init__(**bounds)
        self.keyword = keyword


class _CheckedFloat(_Checked, click.FloatRange):
    parse = click.FLOAT

    def __init__(self, keyword: str, **bounds: Any) -> None:
        super().__init__(**bounds)
        self.keyword = keyword


class _CheckedNumber(_Checked, click.ParamType):
    """A number without a range to show (INTEGER or FLOAT in --help)."""

    def __init__(self, keyword: str, parse: click.ParamType) -> None:
        self.keyword, self.parse, self.name = keyword, parse, parse.name


class _CheckedText(_Checked, click.ParamType):
    """A string whose form the API's check (or its dataclass) decides."""

    name = "text"
    parse = click.STRING

    def __init__(self, keyword: str) -> None:
        self.keyword = keyword


class _CheckedChoice(_Checked, click.Choice):
    parse = click.STRING

    def __init__(self, keyword: str, choices: tuple[str, ...]) -> None:
        super().__init__(choices)
        self.keyword = keyword
