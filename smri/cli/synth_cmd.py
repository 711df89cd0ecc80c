"""`smri synth`: a BraTS-like phantom cohort."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import click

from smri import api
from smri.cli.common import api_defaults, handle_errors, quiet_option, setting
from smri.errors import plural

SYNTH = api_defaults(api.synth)


@click.command()
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--patients", "-n", type=setting("patients"), default=SYNTH["patients"], show_default=True,
    help="Patients to write.",
)  # fmt: skip
@click.option(
    "--hgg-fraction",
    type=setting("hgg_fraction"),
    default=SYNTH["hgg_fraction"],
    show_default=True,
    help="Share of HGG patients (BraTS 2019's share is 0.77).",
)
@click.option(
    "--layout",
    type=setting("layout"),
    default=SYNTH["layout"],
    show_default=True,
    help="2019: OUT/{HGG,LGG}/<pid>/; 2020: OUT/<pid>/ plus OUT/name_mapping.csv.",
)
@click.option(
    "--format",
    "fmt",
    type=setting("format"),
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
    "--seed", type=setting("seed"), default=SYNTH["seed"], show_default=True,
    help="Random seed: same seed, same bytes.",
)  # fmt: skip
@click.option(
    "--site", type=setting("site"), default=SYNTH["site"], show_default=True,
    help="Site code in every patient id (BraTS19_<SITE>_0001_1): a second cohort with another "
    "site never shares an id with the first (e.g. an untouched test cohort).",
)  # fmt: skip
@click.option(
    "--jobs",
    "-j",
    type=setting("jobs"),
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
    site: str,
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
              shape=tuple(shape), seed=seed, site=site, jobs=jobs, overwrite=overwrite,
              quiet=quiet)  # fmt: skip
    with open(out / "truth.csv", newline="") as fh:
        labels = [int(row["label"]) for row in csv.DictReader(fh)]
    click.echo(
        f"wrote {plural(len(labels), 'patient')} (HGG {sum(labels)}, LGG "
        f"{len(labels) - sum(labels)}) to {out} in {time.perf_counter() - t0:.1f} s; "
        f"parameters in {out / 'truth.csv'}"
    )
