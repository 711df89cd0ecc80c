"""The `smri` command group.

Each command lives in its own module, `smri/cli/<command>_cmd.py`, imported only when invoked,
so `smri --help` is instant and torch/matplotlib load only for the commands that need them.
Each parses its options, calls its function of `smri.api`, and prints the result.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading
from typing import Any

import click

from smri.cli.common import UNRECOVERABLE
from smri.version import __version__

# command name -> "module:function"; one line per command, kept in the order `--help` shows.
COMMANDS: dict[str, str] = {
    "synth": "smri.cli.synth_cmd:synth",
    "preprocess": "smri.cli.preprocess_cmd:preprocess",
    "info": "smri.cli.info_cmd:info",
    "show": "smri.cli.show_cmd:show",
    "holdout": "smri.cli.holdout_cmd:holdout",
    "models": "smri.cli.models_cmd:models",
    "train": "smri.cli.train_cmd:train",
    "evaluate": "smri.cli.evaluate_cmd:evaluate",
    "explain": "smri.cli.explain_cmd:explain",
    "predict": "smri.cli.predict_cmd:predict",
    "export": "smri.cli.export_cmd:export",
    "plot": "smri.cli.plot_cmd:plot",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _importable(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet in this checkout
                return None
            raise
        return getattr(module, attr, None)


def _importable(name: str) -> bool:
    module_name = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smri")
def main() -> None:
    """Classify structural MRI (HGG vs LGG glioma by default) with CNN-LSTM models.

    \b
    smri synth demo/                 # a BraTS-like phantom cohort (no data needed)
    smri preprocess demo/ demo.h5    # NIfTI folders -> one HDF5 store (parallel)
    smri train demo.h5 --model cnn2  # CNN-LSTM on the store (GPU if present)
    """


def entry() -> None:
    """The console script: run `main`; a Ctrl-C during interpreter teardown (after the command
    has finished and its outputs are in place) is ignored instead of printing a traceback.

    SIGTERM (`kill`, a job scheduler, `docker stop`) is handled as Ctrl-C is: finished work is
    kept, temporary files are removed and worker processes ended; the exit code is then 143.
    """
    terminated: list[int] = []

    def on_term(signum: int, frame: Any) -> None:
        terminated.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)  # smri's own Ctrl-C handler: stop at the next patient
        else:  # the default, or Ctrl-C ignored (a background job): stop as Ctrl-C would
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sys.unraisablehook = _redeliver_interrupt
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 is printed escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        main()
    except SystemExit as exc:
        if UNRECOVERABLE:  # the one line is printed; every temporary file and worker is gone
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # no teardown: h5py would crash freeing a store HDF5 failed to write
        if terminated and exc.code == 130:
            sys.exit(128 + signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


REDELIVERY_DELAY_S = 0.05


def _redeliver_interrupt(unraisable: Any) -> None:
    """A Ctrl-C that lands in a finaliser (a `__del__`, a weakref callback during garbage
    collection) cannot be raised there: Python prints "Exception ignored ... KeyboardInterrupt"
    with a traceback and goes on as if nothing had happened. Send the signal again instead, a
    moment later from a helper thread (sent at once, it would land in this hook and be lost the
    same way), so that it reaches the command where it can stop it; anything else that cannot be
    raised is reported as Python reports it."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        resend = threading.Timer(REDELIVERY_DELAY_S, os.kill, (os.getpid(), signal.SIGINT))
        resend.daemon = True
        resend.start()
        return
    sys.__unraisablehook__(unraisable)
