"""`smri holdout`: the untouched test patients of a store, listed before anything trains."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import (
    OutputFile,
    api_defaults,
    handle_errors,
    path_option_type,
    quiet_writes_option,
    setting,
)

HOLDOUT = api_defaults(api.holdout)


@click.command()
@click.argument("store", type=path_option_type(dir_okay=False, exists=True))
@click.argument("out", type=OutputFile())
@click.option(
    "--fraction",
    type=setting("fraction"),
    default=HOLDOUT["fraction"],
    show_default=True,
    help="Share of each class set aside (at least one patient of each class on each side).",
)
@click.option(
    "--seed",
    type=setting("seed"),
    default=HOLDOUT["seed"],
    show_default=True,
    help="Seed of the draw (a random stream of its own, never a split of smri train).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT [default: off].")
@quiet_writes_option("the line saying how many patients OUT holds")
@handle_errors
def holdout(store: Path, out: Path, fraction: float, seed: int, overwrite: bool,
            quiet: bool) -> None:  # fmt: skip
    """Set aside a stratified share of STORE's labelled patients as the untouched test set:
    their ids go to the CSV OUT (patient_id,label).

    Train with `smri train STORE --holdout OUT` (never trained or validated on), score at the
    end with `smri evaluate RUN STORE --holdout OUT`.
    """
    written = api.holdout(store, out, fraction=fraction, seed=seed, overwrite=overwrite)
    if quiet:
        return
    with open(written) as fh:
        n = sum(1 for _ in fh) - 1
    click.echo(f"held out {n} patients of {store} as the test set: {written}")
