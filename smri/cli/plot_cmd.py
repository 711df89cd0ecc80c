"""`smri plot`: figures and a summary comparing finished runs."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import api_defaults, handle_errors, path_option_type, quiet_writes_option

PLOT = api_defaults(api.plot)


@click.command()
@click.argument("run_dirs", nargs=-1, required=True,
                type=path_option_type(file_okay=False, exists=True))  # fmt: skip
@click.option(
    "--out",
    type=path_option_type(file_okay=False),
    default=PLOT["out"],
    show_default=True,
    help="Folder for the PNG figures, summary.md and summary.json.",
)
@click.option(
    "--store",
    type=path_option_type(dir_okay=False, exists=True),
    default=None,
    help="The store the runs trained on, for the intensity baseline  [default: the path "
    "recorded in the first run's config.json]",
)
@click.option(
    "--test",
    default=None,
    help="The subfolder of each run holding its scores on the untouched test patients "
    "(smri evaluate RUN TEST_STORE --out RUN/NAME): summary.md then leads with the test set "
    "[default: none: validation only].",
)
@quiet_writes_option("the files written")
@handle_errors
def plot(run_dirs: tuple[Path, ...], out: Path, store: Path | None, test: str | None,
         quiet: bool) -> None:  # fmt: skip
    """Figures and summary comparing runs: loss, accuracy and ROC (K folds as mean ± std
    bands); every model's AUC and balanced accuracy with 95 % intervals, paired tests between
    models on the same patients, and the majority and intensity baselines."""
    written = api.plot(run_dirs, out=out, store=store, test=test)
    for path in [] if quiet else written:
        click.echo(str(path))
