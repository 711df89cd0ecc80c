"""`smri export`."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import (
    api_defaults,
    handle_errors,
    path_option_type,
    quiet_writes_option,
    setting,
)

EXPORT = api_defaults(api.export)


@click.command()
@click.argument("run", type=path_option_type(file_okay=False, exists=True))
@click.argument("out_dir", type=path_option_type(file_okay=False))
@click.option(
    "--fold",
    type=setting("fold"),
    default=EXPORT["fold"],
    help="Of a K-fold run, export fold K's model (0-based) [default: none: a K-fold run is "
    "refused with its folds listed; a single-split run needs none].",
)
@click.option(
    "--license",
    "license_",
    metavar="ID",
    default=EXPORT["license"],
    help="License id for the model card's front matter, e.g. mit or cc-by-nc-4.0 "
    "[default: none: no license line].",
)
@click.option(
    "--dataset",
    metavar="ID",
    default=EXPORT["dataset"],
    help="Hugging Face Hub id of the training data set (e.g. org/name), for the card's "
    "datasets and model-index [default: none: model-index names the cohort's folder].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace model.safetensors, config.json and README.md already in OUT_DIR "
    "[default: off: refuse].",
)
@quiet_writes_option("the files written")
@handle_errors
def export(run: Path, out_dir: Path, fold: int | None, license_: str | None,
           dataset: str | None, overwrite: bool, quiet: bool) -> None:  # fmt: skip
    """Write RUN's best model to OUT_DIR: model.safetensors, config.json and a README.md card.

    The Hugging Face layout: weights without pickle (safe to load from strangers), the config
    `smri predict` and `smri evaluate` need (give them OUT_DIR instead of a checkpoint), and a
    model card (data, split, metrics with intervals, intended use, limitations). Other files
    in OUT_DIR are kept. Needs pip install 'smri[export]'.

    \b
    smri export runs/cnn2 models/glioma-cnn2
    smri export runs/cnn3-cv models/glioma-cnn3-fold2 --fold 2
    """
    written = api.export(run, out_dir, fold=fold, license=license_, dataset=dataset,
                         overwrite=overwrite)  # fmt: skip
    for path in [] if quiet else written:
        click.echo(str(path))
