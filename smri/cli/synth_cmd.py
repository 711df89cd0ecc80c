"""`smri synth` (a BraTS-like phantom cohort) and `smri show` (a PNG of one patient's slab)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from smri.cli.common import OutputFile, handle_errors


@click.command()
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--patients", "-n", type=int, default=40, show_default=True, help="Patients to write."
)
@click.option(
    "--hgg-fraction",
    type=float,
    default=0.77,
    show_default=True,
    help="Share of HGG patients (BraTS 2019's share is 0.77).",
)
@click.option(
    "--layout",
    type=click.Choice(["2019", "2020"]),
    default="2019",
    show_default=True,
    help="2019: OUT/{HGG,LGG}/<pid>/; 2020: OUT/<pid>/ plus OUT/name_mapping.csv.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["nii.gz", "nii"]),
    default="nii.gz",
    show_default=True,
    help="NIfTI file format.",
)
@click.option(
    "--shape",
    type=(int, int, int),
    default=(240, 240, 155),
    show_default=True,
    metavar="X Y Z",
    help="Voxels per axis over a fixed 240x240x155 mm field of view (Z >= 32, X, Y >= 16).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed: same seed, same bytes."
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel worker processes [default: all cores].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a cohort already in OUT (only what synth writes is removed) [default: off].",
)
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
) -> None:
    """Write a BraTS-like cohort of synthetic phantom brains to OUT (not patients' scans).

    Each patient gets flair, t1, t1ce, t2 (int16) and seg (labels 1, 2, 4) NIfTI files;
    OUT/truth.csv records every case's class and tumour parameters. HGG: larger, necrotic core,
    enhancing rim on T1ce; LGG: smaller, non-enhancing, bright on T2/FLAIR.
    """
    from smri.phantoms import SynthConfig, synthesize

    cfg = SynthConfig(
        patients=patients,
        hgg_fraction=hgg_fraction,
        shape=tuple(shape),
        layout=layout,
        fmt=fmt,
        seed=seed,
    )
    t0 = time.perf_counter()
    rows = synthesize(cfg, out, jobs=jobs or -1, overwrite=overwrite)
    n_hgg = sum(r["label"] for r in rows)
    click.echo(
        f"wrote {len(rows)} patients (HGG {n_hgg}, LGG {len(rows) - n_hgg}) to {out} "
        f"in {time.perf_counter() - t0:.1f} s; parameters in {out / 'truth.csv'}"
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
    default=32,
    show_default=True,
    help="Central slices kept from a raw folder (a store records its own).",
)
@click.option(
    "--contours/--no-contours",
    default=False,
    show_default=True,
    help="Outline the tumour regions of the folder's *seg* file (raw folders only).",
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
) -> None:
    """Draw what preprocessing keeps of one patient as a PNG (middle slice of each modality).

    SOURCE is a patient folder, a cohort folder plus PATIENT_ID, or an .h5 store plus
    PATIENT_ID. Raw folders get the same min–max normalisation and central slab as
    `smri preprocess`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from smri.discovery import parse_modalities
    from smri.show import show_patient

    names = parse_modalities(modalities) if modalities is not None else None
    patient = show_patient(
        source,
        patient_id,
        out,
        modalities=names,
        slices=slices,
        montage=montage,
        contours=contours,
    )
    click.echo(f"wrote {out} ({patient.patient_id}, class {patient.label_text})")
