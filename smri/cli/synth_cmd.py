"""`smri synth` (a BraTS-like phantom cohort) and `smri show` (a PNG of one patient's slab)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import click

from smri import api
from smri.cli.common import OutputFile, api_defaults, handle_errors, quiet_option
from smri.errors import plural
from smri.phantoms import FORMATS, LAYOUTS

SYNTH = api_defaults(api.synth)


@click.command()
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--patients", "-n", type=int, default=SYNTH["patients"], show_default=True,
    help="Patients to write.",
)  # fmt: skip
@click.option(
    "--hgg-fraction",
    type=float,
    default=SYNTH["hgg_fraction"],
    show_default=True,
    help="Share of HGG patients (BraTS 2019's share is 0.77).",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default=SYNTH["layout"],
    show_default=True,
    help="2019: OUT/{HGG,LGG}/<pid>/; 2020: OUT/<pid>/ plus OUT/name_mapping.csv.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=SYNTH["format"],
    show_default=True,
    help="NIfTI file format.",
)
@click.option(
    "--shape",
    type=(int, int, int),
    default=SYNTH["shape"],
    show_default=True,
    metavar="X Y Z",
    help="Voxels per axis over a fixed 240x240x155 mm field of view (Z >= 32, X, Y >= 16).",
)
@click.option(
    "--seed", type=int, default=SYNTH["seed"], show_default=True,
    help="Random seed: same seed, same bytes.",
)  # fmt: skip
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=SYNTH["jobs"],
    help="Parallel worker processes, at most one per usable core [default: all cores].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a cohort already in OUT (only what synth writes is removed) [default: off].",
)
@quiet_option("")
@handle_errors
def synth(
    out: Path,
    patients: int,
    hgg_fraction: float,
    layout: str,
    fmt: str,
    shape: tuple[int, int, int],
    seed: int,
    jobs: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write a BraTS-like cohort of synthetic phantom brains to OUT (not patients' scans).

    Each patient gets flair, t1, t1ce, t2 (int16) and seg (labels 1, 2, 4) NIfTI files;
    OUT/truth.csv records every case's class and tumour parameters. HGG: larger, necrotic core,
    enhancing rim on T1ce; LGG: smaller, non-enhancing, bright on T2/FLAIR.
    """
    t0 = time.perf_counter()
    api.synth(out, patients=patients, hgg_fraction=hgg_fraction, layout=layout, format=fmt,
              shape=tuple(shape), seed=seed, jobs=jobs, overwrite=overwrite,
              quiet=quiet)  # fmt: skip
    with open(out / "truth.csv", newline="") as fh:
        labels = [int(row["label"]) for row in csv.DictReader(fh)]
    click.echo(
        f"wrote {plural(len(labels), 'patient')} (HGG {sum(labels)}, LGG "
        f"{len(labels) - sum(labels)}) to {out} in {time.perf_counter() - t0:.1f} s; "
        f"parameters in {out / 'truth.csv'}"
    )


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
    type=click.IntRange(min=1),
    default=api_defaults(api.preprocess)["slices"],
    show_default=True,
    help="Central slices kept from a raw folder (a store records its own).",
)
@click.option(
    "--contours/--no-contours",
    default=False,
    show_default=True,
    help="Outline the tumour regions of the folder's *seg* file, or of the store's mask.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file that is not a PNG image (a PNG is always replaced; "
    "what SOURCE reads never is) [default: off].",
)
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
) -> None:
    """Draw what preprocessing keeps of one patient as a PNG (middle slice of each modality).

    SOURCE is a patient folder, a cohort folder plus PATIENT_ID, or an .h5 store plus
    PATIENT_ID. Raw folders get the same min–max normalisation and central slab as
    `smri preprocess`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from smri.discovery import parse_modalities
    from smri.preprocessing.show import show_patient

    names = parse_modalities(modalities) if modalities is not None else None
    patient = show_patient(
        source,
        patient_id,
        out,
        modalities=names,
        slices=slices,
        montage=montage,
        contours=contours,
        overwrite=overwrite,
    )
    click.echo(f"wrote {out} ({patient.patient_id}, class {patient.label_text})")
