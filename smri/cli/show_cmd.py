"""`smri show`: a PNG of what preprocessing keeps of one patient."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import OutputFile, api_defaults, handle_errors, quiet_writes_option, setting

SHOW = api_defaults(api.show)


@click.command()
@click.argument("source", metavar="SOURCE", type=click.Path(exists=True, path_type=Path))
@click.argument("patient_id", metavar="[PATIENT_ID]", required=False)
@click.option(
    "--out",
    "-o",
    type=OutputFile(),
    required=True,
    help="PNG file to write.",
)
@click.option(
    "--montage",
    is_flag=True,
    help="Show every slice of the slab, one row per modality [default: off: the middle slice].",
)
@click.option(
    "--modalities",
    default=None,
    help="Modalities to show, comma-separated, in order [default: flair,t1,t1ce,t2; for a "
    "store, all of its modalities].",
)
@click.option(
    "--slices",
    type=setting("slices"),
    default=SHOW["slices"],
    show_default=True,
    help="Central slices kept from a raw folder (a store records its own).",
)
@click.option(
    "--contours/--no-contours",
    default=SHOW["contours"],
    show_default=True,
    help="Outline the tumour regions of the folder's *seg* file, or of the store's mask.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file that is not a PNG image (a PNG is always replaced; "
    "what SOURCE reads never is) [default: off].",
)
@quiet_writes_option("the line naming the PNG, the patient and its class")
@handle_errors
def show(
    source: Path,
    patient_id: str | None,
    out: Path,
    montage: bool,
    modalities: str | None,
    slices: int,
    contours: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Draw what preprocessing keeps of one patient as a PNG (middle slice of each modality).

    SOURCE is a patient folder, a cohort folder plus PATIENT_ID, or an .h5 store plus
    PATIENT_ID. Raw folders get the same min–max normalisation and central slab as
    `smri preprocess`.
    """
    import matplotlib

    matplotlib.use("Agg")
    patient = api.show(source, patient_id, out=out, montage=montage, modalities=modalities,
                       slices=slices, contours=contours, overwrite=overwrite)  # fmt: skip
    if not quiet:
        click.echo(f"wrote {out} ({patient.patient_id}, class {patient.label_text})")
