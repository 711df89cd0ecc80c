"""`smri predict`: probabilities for raw patient folders."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import (
    OutputFile,
    api_defaults,
    handle_errors,
    path_option_type,
    quiet_option,
    setting,
)

PREDICT = api_defaults(api.predict)


@click.command()
@click.argument("checkpoint", metavar="MODEL", type=path_option_type(exists=True))
@click.argument("patient_dirs", nargs=-1, required=True,
                type=path_option_type(file_okay=False, exists=True))  # fmt: skip
@click.option(
    "--csv",
    "csv_path",
    type=OutputFile(),
    default=None,
    help="Also write patient_id,probability,predicted to this CSV file "
    "[default: none: print only].",
)
@click.option(
    "--batch-size",
    type=setting("batch_size"),
    default=PREDICT["batch_size"],
    show_default=True,
    help="Patients per forward pass.",
)
@click.option("--device", default=PREDICT["device"], show_default=True,
              help="auto, cuda, cuda:N or cpu.")  # fmt: skip
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing --csv file [default: off: refuse]."
)
@quiet_option("")
@handle_errors
def predict(checkpoint: Path, patient_dirs: tuple[Path, ...], csv_path: Path | None,
            batch_size: int, device: str, overwrite: bool, quiet: bool) -> None:  # fmt: skip
    """Probability of class 1 for raw NIfTI patient folders, preprocessed as the store was.

    MODEL is a checkpoint (a run's best.pt) or a folder written by `smri export`. A folder is
    a BraTS-style patient folder (2018-2021 or 2023 names), a BIDS subject (sub-01, one
    session) or a BIDS session folder (sub-01/ses-02, predicted as sub-01_ses-02).

    The probability is calibrated: the class weighting of training is undone, so among
    patients like the training cohort, about that share are class 1. `predicted` is class 1
    at and above the model's threshold, the training share of class 1 (the balanced rule the
    class weighting aims at), not at 0.5.
    """
    results = api.predict(checkpoint, patient_dirs, csv=csv_path, batch_size=batch_size,
                          device=device, overwrite=overwrite, quiet=quiet,
                          log=lambda line: click.echo(line, err=True))  # fmt: skip
    width = max(len("patient_id"), *(len(r.patient_id) for r in results))
    click.echo(f"{'patient_id':<{width}}  probability  predicted")
    for r in results:
        click.echo(f"{r.patient_id:<{width}}  {r.probability:>11.4f}  {r.predicted}")
