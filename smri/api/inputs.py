"""The API of cohorts and stores: `synth` (a phantom cohort), `preprocess` (NIfTI folders to a
store), `info` (what a store holds) and `show` (a PNG of one patient's slab)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from smri.api.common import Log, PathLike, bars, public, silent
from smri.atomic import OutputLock
from smri.errors import ConfigError, DataError
from smri.messages import python_log
from smri.parallel import DEFAULT_BACKEND, cap_jobs
from smri.phantoms import SynthConfig
from smri.preprocessing import PreprocessConfig, PreprocessSummary

if TYPE_CHECKING:
    from smri.preprocessing.show import ShownPatient
    from smri.store import StoreInfo

_PRE, _SYNTH = PreprocessConfig(), SynthConfig()


# ------------------------------------------------------------------------------------ synth
@public
def synth(
    out: PathLike,
    *,
    patients: int = _SYNTH.patients,
    hgg_fraction: float = _SYNTH.hgg_fraction,
    layout: str = _SYNTH.layout,
    format: str = _SYNTH.fmt,
    shape: tuple[int, int, int] = _SYNTH.shape,
    seed: int = _SYNTH.seed,
    site: str = _SYNTH.site,
    jobs: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
) -> Path:
    """Write a BraTS-like phantom cohort to the folder `out` (`smri synth`); returns `out`.

    Each patient gets flair, t1, t1ce, t2 and seg NIfTI files; ``out/truth.csv`` records each
    case's class and tumour parameters. The same settings write the same bytes.

    Args:
        out: the cohort folder to write.
        patients: how many patients.
        hgg_fraction: the share of HGG patients (BraTS 2019's is 0.77).
        layout: ``"2019"`` (``out/{HGG,LGG}/<id>/``) or ``"2020"`` (``out/<id>/`` and a
            name_mapping.csv).
        format: the NIfTI file format, ``"nii.gz"`` or ``"nii"``.
        shape: voxels per axis (X, Y, Z) over a fixed 240x240x155 mm field of view.
        seed: the random seed.
        site: the site code in every patient id (``BraTS19_<site>_0001_1``): a cohort of
            another site never shares an id with this one (an untouched test cohort).
        jobs: worker processes, at most one per usable core and as memory allows (None: all).
        overwrite: replace a cohort already in `out` (only what synth wrote is removed).
        progress: show a progress bar (None: when stderr is a terminal).
        quiet: no progress bar.
    """
    from smri.phantoms import synthesize

    cfg = SynthConfig(patients=patients, hgg_fraction=hgg_fraction, shape=tuple(shape),
                      layout=layout, fmt=format, seed=seed, site=site)  # fmt: skip
    cfg.validate()
    jobs = _synth_jobs(cfg, cap_jobs(jobs, silent))  # at most one per core, and as memory allows
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(Path(out)):  # a second synth into OUT stops here, before it deletes a file
        try:
            synthesize(cfg, Path(out), jobs=jobs, overwrite=overwrite,
                       progress=bars(progress, quiet))  # fmt: skip
        except MemoryError:
            raise DataError(_synth_memory(cfg, "ran out of memory")) from None
        except Exception as exc:  # joblib's TerminatedWorkerError: a worker killed by the OS
            if type(exc).__name__ != "TerminatedWorkerError":
                raise
            raise DataError(_synth_memory(cfg, "a worker process was killed")) from None
    return Path(out)


# Peak memory of one phantom being made and written, per voxel of --shape: measured 38-52
# bytes (96^3 to 256x256x200); a margin on top.
SYNTH_BYTES_PER_VOXEL = 64


def _synth_jobs(cfg: SynthConfig, jobs: int) -> int:
    """Worker processes that fit in the available memory; ConfigError (--shape) if none does."""
    from smri.parallel import available_memory

    need = math.prod(cfg.shape) * SYNTH_BYTES_PER_VOXEL
    fits = available_memory() // need
    if fits < 1:
        raise ConfigError(_synth_memory(cfg, "too large for this machine", jobs=False),
                          option="--shape")  # fmt: skip
    return int(min(jobs, fits))


def _synth_memory(cfg: SynthConfig, what: str, jobs: bool = True) -> str:
    from smri.parallel import available_memory

    x, y, z = cfg.shape
    need = math.prod(cfg.shape) * SYNTH_BYTES_PER_VOXEL
    return (
        f"{what}: a phantom of {x}x{y}x{z} voxels takes about {need / 2**30:,.1f} GiB while it "
        f"is made, and {available_memory() / 2**30:,.1f} GiB are available; use a smaller "
        "--shape (the field of view stays 240x240x155 mm)" + (" or fewer --jobs" if jobs else "")
    )


# ------------------------------------------------------------------------------- preprocess
@public
def preprocess(
    input: PathLike,
    output: PathLike,
    *,
    jobs: int | None = None,
    modalities: str | Sequence[str] = _PRE.modalities,
    slices: int = _PRE.slices,
    labels: PathLike | None = None,
    classes: str | Mapping[str, int] | None = None,
    label_column: str | None = None,
    positive: str | None = None,
    session: str | None = None,
    bids_filter: str | Sequence[str] = (),
    bids_filter_file: PathLike | None = None,
    dtype: str = _PRE.dtype,
    compression: str = _PRE.compression,
    canonical: bool = _PRE.canonical,
    masks: bool = _PRE.masks,
    overwrite: bool = False,
    append: bool = False,
    resume: bool = False,
    strict: bool = False,
    backend: str = DEFAULT_BACKEND,
    scheduler: str | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = python_log,
) -> PreprocessSummary:
    """Preprocess the patient folders under `input` into the HDF5 store `output`
    (`smri preprocess`): each volume min-max normalised and cropped to its central `slices`.

    Returns the summary: ``.written`` per class, ``.skipped`` with reasons, ``.output``,
    ``.seconds``, ``.warnings``, and ``.line()``, the command's last line. Messages (skipped
    patients, warnings) go to `log`.

    Args:
        input: the folder of patient folders (BraTS, class folders, BIDS: docs/usage.md).
        output: the store to write (an .h5 file).
        jobs: parallel workers, at most one per usable core (None: all cores).
        modalities: modality names in order, ``"flair,t1,t1ce,t2"`` or a sequence.
        slices: central slices kept along the third (depth) axis.
        labels: a CSV of patient_id,label (None: ``input/name_mapping.csv`` when present).
        classes: class names and labels, ``"LGG=0,HGG=1"`` or a mapping (None: from the
            data: LGG/HGG for class folders and grade columns named so, a 0/1 label column's
            own values ``"0"``/``"1"``, or with `positive`, ``not VALUE``=0 and VALUE=1).
        label_column: BIDS: the participants.tsv column holding the labels.
        positive: BIDS: the `label_column` value that is class 1 (any other is 0).
        session: BIDS: read session ``ses-<session>`` of every subject.
        bids_filter: BIDS: entity filters choosing among a modality's variants,
            ``"acq=MPRAGE"`` or ``"t1:run=1"`` or a sequence of them (docs/usage.md#bids).
        bids_filter_file: BIDS: a JSON filter file as BIDS apps take (fMRIPrep's format,
            ``{"t1w": {"acquisition": "MPRAGE"}}``), read before `bids_filter`.
        dtype: the stored voxel type, ``"float16"`` or ``"float32"``.
        compression: the HDF5 filter for images: ``"none"``, ``"lzf"``, ``"gzip-1"`` to ``-9``.
        canonical: reorient every volume to the closest canonical (RAS+) orientation first.
        masks: store each patient's segmentation of the slab (never used in training).
        overwrite: replace `output` if it exists.
        append: add `input`'s patients that the store `output` lacks (same settings).
        resume: continue an interrupted run from the patients it already wrote.
        strict: stop at the first unusable patient instead of skipping it.
        backend: where patients are processed: ``"threading"``, ``"loky"`` or ``"dask"``.
        scheduler: the address of a running Dask scheduler, for ``backend="dask"``.
        progress: show a progress bar (None: when stderr is a terminal).
        quiet: no progress bar (preprocessing logs only warnings besides).
        log: receives each message line (default ``python_log``:
            warnings through ``warnings.warn`` as ``smri.SmriWarning``, info lines to the
            ``smri`` logger at INFO).
    """
    from smri.discovery import BidsOptions, parse_bids_filters, parse_classes, parse_modalities
    from smri.files import special_kind

    if append and (overwrite or resume):
        raise ConfigError(
            f"--append cannot be combined with {'--overwrite' if overwrite else '--resume'}: "
            "an append adds to OUTPUT (and an interrupted one leaves it unchanged)"
        )
    labels_csv = None if labels is None else Path(labels)
    if labels_csv is not None and not labels_csv.is_file():
        kind = special_kind(labels_csv)
        problem = (f"is {kind}, not a regular file" if kind else "is a folder; expected a CSV "
                   "file" if labels_csv.is_dir() else "no such file")  # fmt: skip
        raise ConfigError(f"{labels_csv}: {problem}", option="--labels")
    if classes is None:
        class_names = None  # from the data: the layout's, or the label column's own names
    elif isinstance(classes, str):
        class_names = parse_classes(classes)
    else:
        class_names = parse_classes(",".join(f"{k}={v}" for k, v in classes.items()))
    names = modalities if isinstance(modalities, str) else ",".join(modalities)
    cfg = PreprocessConfig(modalities=parse_modalities(names), slices=slices, dtype=dtype,
                           compression=compression, canonical=canonical,
                           classes=class_names, masks=masks)  # fmt: skip
    common = {
        "jobs": jobs, "labels_csv": labels_csv, "strict": strict, "backend": backend,
        "scheduler": scheduler, "progress": bars(progress, quiet), "echo": log,
        "bids": BidsOptions(label_column, positive, session, parse_bids_filters(
            [bids_filter] if isinstance(bids_filter, str) else bids_filter,
            None if bids_filter_file is None else Path(bids_filter_file))),
    }  # fmt: skip
    if append:
        from smri.preprocessing import append_preprocess

        return append_preprocess(Path(input), Path(output), cfg, **common)
    from smri.preprocessing import run_preprocess

    return run_preprocess(Path(input), Path(output), cfg, overwrite=overwrite, resume=resume,
                          **common)  # fmt: skip


# ------------------------------------------------------------------------------------- info
@public
def info(store: PathLike) -> StoreInfo:
    """What the store `store` holds (`smri info`): patients per class, shape, dtype, settings,
    masks and how much tumour the slab holds, orientations, skipped patients.

    Returns a `StoreInfo`; its ``.as_dict()`` is what ``smri info --json`` prints.

    Args:
        store: a store written by `preprocess`.
    """
    from smri.store import read_info

    return read_info(Path(store))


# ------------------------------------------------------------------------------------- show
@public
def show(
    source: PathLike,
    patient_id: str | None = None,
    *,
    out: PathLike,
    montage: bool = False,
    modalities: str | Sequence[str] | None = None,
    slices: int = _PRE.slices,
    contours: bool = False,
    overwrite: bool = False,
) -> ShownPatient:
    """Draw what preprocessing keeps of one patient into the PNG `out` (`smri show`).

    Raw folders get preprocessing's min-max normalisation and central slab. Returns the
    patient drawn: ``.patient_id``, ``.label_text``, ``.slab`` (M, S, H, W).

    Args:
        source: a patient folder, a cohort folder (with `patient_id`) or a store (with
            `patient_id`).
        patient_id: the patient to draw from a cohort folder or a store.
        out: the PNG file to write.
        montage: every slice of the slab, one row per modality (default: the middle slice).
        modalities: the modalities to show, in order, ``"flair,t1"`` or a sequence (None:
            flair, t1, t1ce, t2; for a store, all of its modalities).
        slices: central slices kept from a raw folder (a store records its own).
        contours: outline the tumour regions of the folder's seg file, or the store's mask.
        overwrite: replace an existing `out` that is not a PNG image (a PNG is always
            replaced).
    """
    from smri.discovery import parse_modalities
    from smri.preprocessing.show import show_patient

    names = None
    if modalities is not None:
        names = parse_modalities(
            modalities if isinstance(modalities, str) else ",".join(modalities)
        )
    return show_patient(Path(source), patient_id, Path(out), modalities=names, slices=slices,
                        montage=montage, contours=contours, overwrite=overwrite)  # fmt: skip
