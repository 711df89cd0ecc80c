"""The `smri` command group.

Commands live in their own modules and are imported only when invoked, so `smri --help` is
instant and torch/matplotlib load only for the commands that need them.
"""

from __future__ import annotations

import importlib
import signal

import click

from smri import __version__

# command name -> "module:function"; one line per command, kept in the order `--help` shows.
COMMANDS: dict[str, str] = {
    "synth": "smri.cli.synth_cmd:synth",
    "preprocess": "smri.cli.preprocess_cmd:preprocess",
    "info": "smri.cli.preprocess_cmd:info",
    "show": "smri.cli.synth_cmd:show",
    "models": "smri.cli.train_cmd:models",
    "train": "smri.cli.train_cmd:train",
    "evaluate": "smri.cli.train_cmd:evaluate",
    "predict": "smri.cli.train_cmd:predict",
    "plot": "smri.cli.train_cmd:plot",
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


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Volumes and activations are tens of MB: glibc serves each from a fresh mmap and unmaps it
    when freed, so every training step and every decompressed volume pays page faults on
    first touch again (slow on VMs: measured here, 45 % less CPU time per CPU training step).
    Disabling mmap for large blocks and never trimming the heap keeps the pages mapped; peak
    memory is unchanged. One arena for all threads: the per-thread arenas that preprocessing's
    worker threads would get are separate heaps that glibc does shrink, so each decompressed
    volume faulted its pages in again (measured: 2 threads 16.6 -> 19.3 patients/s). Set
    MALLOC_MMAP_MAX_ yourself to opt out; no-op off glibc.
    """
    import ctypes
    import os

    if os.environ.get("MALLOC_MMAP_MAX_") is not None:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap for large blocks
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the heap top
        libc.mallopt(-8, 1)  # M_ARENA_MAX: threads share the main heap, which is never trimmed
    except (OSError, AttributeError):
        pass


def entry() -> None:
    """The console script: run `main`; a Ctrl-C during interpreter teardown (after the command
    has finished and its outputs are in place) is ignored instead of printing a traceback."""
    keep_freed_memory()
    try:
        main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
