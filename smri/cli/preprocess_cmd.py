"""`smri preprocess`: NIfTI patient folders to one HDF5 store."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import OutputFile, api_defaults, handle_errors, quiet_option, setting

PathArg = click.Path(path_type=Path)
PREPROCESS = api_defaults(api.preprocess)


@click.command()
@click.argument("input_dir", metavar="INPUT", type=PathArg)
@click.argument("output", metavar="OUTPUT", type=OutputFile())
@click.option(
    "--jobs",
    "-j",
    type=setting("jobs"),
    default=None,
    help="Parallel workers (threads, processes, or local Dask workers), at most one per usable "
    "core; with --scheduler, patients in flight at once [default: all cores, or the cluster's "
    "worker threads].",
)
@click.option(
    "--modalities",
    default=",".join(PREPROCESS["modalities"]),
    show_default=True,
    help="Modalities to read, comma-separated, also the sequence order: file suffixes, or "
    "smri's names for BIDS, BraTS 2023, nnU-Net and MSD channels (docs/usage.md).",
)
@click.option(
    "--slices",
    type=setting("slices"),
    default=PREPROCESS["slices"],
    show_default=True,
    help="Central slices kept along the third (depth) axis.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=PathArg,
    default=None,
    help="CSV with patient_id,label columns (or BraTS 2020's name_mapping.csv); needed for "
    "BraTS 2023, nnU-Net and MSD datasets [default: INPUT/name_mapping.csv when present, "
    "else none].",
)
@click.option(
    "--classes",
    metavar="NAME=0,NAME=1",
    default=None,
    help="Class names and their labels: class folder names, or names in the labels CSV "
    "(or participants.tsv column) [default: from the data: class folders HGG/, LGG/ or a "
    "grade column of HGG/LGG give those names (LGG=0,HGG=1); a 0/1 label column its own "
    "values, 0 and 1; --positive VALUE gives 'not VALUE' and VALUE].",
)
@click.option(
    "--label-column",
    metavar="COLUMN",
    default=None,
    help="BIDS: the participants.tsv column holding the labels (0/1 or --classes names, or "
    "see --positive); n/a leaves a subject out, with a reason [default: none; required for a "
    "BIDS INPUT without --labels].",
)
@click.option(
    "--positive",
    metavar="VALUE",
    default=None,
    help="BIDS: the --label-column value that is class 1 (any other value is 0); class names "
    "become 'not VALUE' and VALUE unless --classes is given [default: none: values are 0/1 or "
    "class names].",
)
@click.option(
    "--session",
    metavar="LABEL",
    default=None,
    help="BIDS: read session ses-LABEL of every subject [default: none: each subject's only "
    "session; a subject with several is left out, with a reason].",
)
@click.option(
    "--bids-filter",
    metavar="[MODALITY:]ENTITY=VALUE",
    multiple=True,
    default=(),
    help="BIDS: choose among a modality's variants (acq-, run-, rec-, ...); repeatable. "
    "acq=MPRAGE keeps, of the files carrying acq-, those with acq-MPRAGE; t1:run=1 makes "
    "the t1 file carry run-1 (t1:run= : no run-) [default: none: a subject with two files "
    "for one modality is left out, with a reason naming them].",
)
@click.option(
    "--bids-filter-file",
    metavar="FILE",
    type=PathArg,
    default=None,
    help='BIDS: a JSON filter file as BIDS apps take (fMRIPrep\'s), e.g. {"t1w": '
    '{"acquisition": "MPRAGE"}}; queries t1w, t2w, flair (and t1, t1ce) [default: none].',
)
@click.option(
    "--dtype",
    type=setting("dtype"),
    default=PREPROCESS["dtype"],
    show_default=True,
    help="Stored voxel type (values are in [0, 1]; float16 keeps 11 bits).",
)
@click.option(
    "--compression",
    type=setting("compression"),
    default=PREPROCESS["compression"],
    show_default=True,
    help="HDF5 filter for images: gzip is HDF5's own (every HDF5 tool reads it); lzf is "
    "h5py's (h5dump and other languages need its plugin); speeds in docs/performance.md.",
)
@click.option(
    "--canonical/--no-canonical",
    default=PREPROCESS["canonical"],
    show_default=True,
    help="Reorient every volume to the closest canonical (RAS+) orientation first.",
)
@click.option(
    "--masks/--no-masks",
    default=PREPROCESS["masks"],
    show_default=True,
    help="Store each patient's segmentation (*_seg.nii[.gz]) of the same slab, and how much of "
    "its tumour the slab holds (for smri info and smri explain; never used in training).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists [default: off].")
@click.option(
    "--append",
    is_flag=True,
    help="Add INPUT's patients that the existing store OUTPUT lacks (same settings needed); "
    "patients already in it are skipped. OUTPUT is replaced only when the new store is complete "
    "[default: off].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from the patients it already wrote (same settings) "
    "[default: off].",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop (exit 1) at the first unusable patient instead of skipping it [default: off].",
)
@click.option(
    "--backend",
    type=setting("backend"),
    default=PREPROCESS["backend"],
    show_default=True,
    help="Where patients are processed: threads share memory and ISA-L gzip and numpy release "
    "the GIL, so no array is pickled back to the writer (see docs/performance.md); loky uses "
    "local processes; dask a Dask cluster (--scheduler, or a local one with --jobs worker "
    "processes; needs pip install 'smri[distributed]'). This process is always the only writer.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Address of a running Dask scheduler (e.g. tcp://host:8786) for --backend dask; its "
    "workers must see INPUT at the same path [default: start a local cluster].",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar [default: when stderr is a terminal].",
)
@quiet_option(" (as --no-progress: preprocess prints only warnings besides)")
@handle_errors
def preprocess(
    input_dir: Path,
    output: Path,
    jobs: int | None,
    modalities: str,
    slices: int,
    labels_csv: Path | None,
    classes: str | None,
    label_column: str | None,
    positive: str | None,
    session: str | None,
    bids_filter: tuple[str, ...],
    bids_filter_file: Path | None,
    dtype: str,
    compression: str,
    canonical: bool,
    masks: bool,
    overwrite: bool,
    append: bool,
    strict: bool,
    resume: bool,
    backend: str,
    scheduler: str | None,
    progress: bool | None,
    quiet: bool,
) -> None:
    """Turn patient folders of NIfTI under INPUT into one HDF5 store OUTPUT.

    Each volume is min–max normalised over the whole volume and cropped to its central
    --slices slices; a patient becomes a (modality, slice, y, x) array. INPUT may be BraTS
    2018/2019 class folders (HGG/, LGG/), BraTS 2020 flat folders with name_mapping.csv,
    other class folders (--classes), flat folders with --labels CSV, BraTS 2023 folders
    (BraTS-GLI-00000-000/, --labels CSV), a BIDS dataset (sub-*/anat/, --label-column), or
    an nnU-Net raw or Medical Segmentation Decathlon dataset (dataset.json, imagesTr/,
    --labels CSV).
    """
    summary = api.preprocess(
        input_dir, output, jobs=jobs, modalities=modalities, slices=slices, labels=labels_csv,
        classes=classes,
        label_column=label_column, positive=positive, session=session,
        bids_filter=bids_filter, bids_filter_file=bids_filter_file, dtype=dtype,
        compression=compression, canonical=canonical, masks=masks, overwrite=overwrite,
        append=append,
        resume=resume, strict=strict, backend=backend, scheduler=scheduler, progress=progress,
        quiet=quiet, log=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    click.echo(summary.line())
