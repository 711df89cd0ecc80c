"""`smri evaluate`: a model's metrics on a store."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import (
    api_defaults,
    cache_options,
    handle_errors,
    path_option_type,
    quiet_option,
    setting,
)

EVALUATE = api_defaults(api.evaluate)


@click.command()
@click.argument("checkpoint", metavar="MODEL", type=path_option_type(exists=True))
@click.argument("store", type=path_option_type(dir_okay=False))
@click.option("--out", type=path_option_type(file_okay=False), default=None,
              help="Folder for metrics.json, predictions.csv, roc.png [default: eval-<store "
                   "name> beside the checkpoint, or inside an exported MODEL folder].")  # fmt: skip
@click.option(
    "--batch-size",
    type=setting("batch_size"),
    default=EVALUATE["batch_size"],
    show_default=True,
    help="Patients per batch.",
)
@click.option("--device", default=EVALUATE["device"], show_default=True,
              help="auto, cuda, cuda:N or cpu.")  # fmt: skip
@cache_options(EVALUATE)
@click.option(
    "--saliency-patients",
    type=setting("saliency_patients"),
    default=EVALUATE["saliency_patients"],
    show_default=True,
    help="When STORE has masks: the share of saliency inside the tumour, as smri explain "
    "computes it, averaged over this many patients with tumour in the slab at most (the run's "
    "validation patients when STORE holds them, else all); 0 skips it.",
)
@click.option(
    "--holdout",
    type=path_option_type(dir_okay=False, exists=True),
    default=None,
    help="A holdout list (CSV with a patient_id column, written by smri holdout): evaluate "
    "these patients of STORE only [default: all].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the results of an earlier evaluate in --out [default: off: refuse].",
)
@quiet_option("")
@handle_errors
def evaluate(checkpoint: Path, store: Path, out: Path | None, batch_size: int, device: str,
             cache: str, workers: int, saliency_patients: int, holdout: Path | None,
             overwrite: bool, quiet: bool) -> None:  # fmt: skip
    """Metrics of MODEL on every labelled patient of STORE (e.g. an untouched test cohort).

    MODEL is a checkpoint (a run's best.pt), a folder written by `smri export`, or a run
    folder: then every training of it (each fold and seed) scores the patients, and a patient
    any of them trained or validated on is refused. Prints the metrics as JSON; writes them
    with predictions.csv and a ROC curve to --out. Probabilities are calibrated (the class
    weighting of training undone); class 1 is predicted at and above the model's threshold,
    the training share of class 1.
    """
    report = api.evaluate(checkpoint, store, out=out, batch_size=batch_size, device=device,
                          cache=cache, workers=workers, saliency_patients=saliency_patients,
                          holdout=holdout, overwrite=overwrite, quiet=quiet,
                          log=lambda line: click.echo(line, err=True))  # fmt: skip
    where = report.pop("out")
    from smri.jsonfiles import json_text

    click.echo(json_text(report))  # NaN (an AUC of one class) as null, as in metrics.json
    click.echo(f"written to {where}", err=True)
