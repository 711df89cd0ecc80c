"""NIfTI patient folders -> one HDF5 store, in parallel, with the parent as the only writer.

`load_patient` turns one patient into its ``(M, S, H, W)`` array, and its segmentation into the
``(S, H, W)`` mask of the same slab (a picklable top-level function, also used by
`smri predict`); `run_preprocess` fans it out (threads, processes or a
Dask cluster, see `smri.parallel`) and streams the results, in sorted patient order, into a
`StoreWriter`. At most ``2 * jobs`` patients are in flight, so memory stays bounded whatever the
cohort size.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smri import store
from smri.atomic import OutputLock, check_not_input, partial_path, remove_unique_partials
from smri.discovery import (
    DEFAULT_CLASSES,
    DEFAULT_MODALITIES,
    BidsOptions,
    Discovery,
    Patient,
    discover,
)
from smri.errors import ConfigError, DataError, PatientError, plural
from smri.parallel import DEFAULT_BACKEND, DeferredInterrupt, check_backend, ordered_map, pool
from smri.store import (
    COMPRESSIONS,
    DTYPES,
    LABELS,
    NO_MASK,
    LockedError,
    MaskChunk,
    StoreReader,
    StoreWriter,
    aligned_empty,
    orientation_counts,
    write_error,
)
from smri.volume import axis_codes, header_shape, label_slab, load_volume, open_volume

# How often the unfinished store is flushed with its resume state: a crash loses at most this
# much work. Flushing after every patient cost 4-19 ms each, taken from the workers on 2 cores.
CHECKPOINT_SECONDS = 1.0

DEFAULT_SLICES = 32


@dataclass(frozen=True)
class PreprocessConfig:
    """How volumes become store rows; saved in the store and in every checkpoint."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    slices: int = DEFAULT_SLICES
    dtype: str = "float16"
    compression: str = "none"
    canonical: bool = False
    classes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    masks: bool = True  # store each patient's segmentation of the slab (never used in training)

    def __post_init__(self) -> None:
        if self.slices < 1:
            raise ConfigError(f"must be at least 1, got {self.slices}", option="--slices")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"expected one of {', '.join(DTYPES)}, got {self.dtype!r}", option="--dtype"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"expected one of {', '.join(COMPRESSIONS)}, got {self.compression!r}",
                option="--compression",
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Rebuild from `to_dict` output (a store's or checkpoint's config); extra keys ignored."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "modalities" in known:
            known["modalities"] = tuple(known["modalities"])
        return cls(**known)


@dataclass
class PatientResult:
    """One preprocessed patient: images ``(M, S, H, W)`` in the store dtype, plus metadata, and
    the ``(S, H, W)`` uint8 mask of its segmentation when it has one."""

    patient_id: str
    label: int
    images: np.ndarray
    meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    mask: np.ndarray | MaskChunk | None = None  # compressed by the worker (the direct writer)


def load_patient(
    patient: Patient,
    cfg: PreprocessConfig,
    expect_inplane: tuple[int, int] | None = None,
    relative_to: Path | None = None,
) -> PatientResult:
    """Load, min–max normalise and crop every modality of `patient` (the seed's method).

    Raises PatientError naming the patient, the file and the problem.
    """
    pid = patient.patient_id
    images: np.ndarray | None = None
    meta: dict[str, Any] = {
        "original_shape": [],
        "spacing": [],
        "intensity_min": [],
        "intensity_max": [],
        "source_files": [],
        "axis_codes": [],
    }
    notes: list[str] = []
    first_file: Path | None = None
    first_shape: tuple[int, int, int] | None = None
    for m, path in enumerate(patient.files):
        try:
            vol = open_volume(path, canonical=cfg.canonical)
        except DataError as exc:
            raise PatientError(pid, str(exc)) from None
        x, y, z = vol.shape
        if z < cfg.slices:
            raise PatientError(
                pid,
                f"{path}: {plural(z, 'slice')} along the third axis, fewer than the "
                f"{cfg.slices} asked for (--slices)",
            )
        if images is None:
            first_file, first_shape = path, vol.shape
            inplane = (y, x)
            if expect_inplane is not None and inplane != tuple(expect_inplane):
                raise PatientError(
                    pid,
                    f"{path}: in-plane shape {x}x{y} differs from the store's "
                    f"{expect_inplane[1]}x{expect_inplane[0]} (the most "
                    "common shape in this cohort)",
                )
            # page-aligned: the store writes each volume from here with O_DIRECT
            images = aligned_empty((len(patient.files), cfg.slices, y, x), cfg.dtype)
        elif (y, x) != images.shape[2:]:
            raise PatientError(
                pid,
                f"{path}: shape {vol.shape} disagrees with "
                f"{first_file.name} ({images.shape[3]}, {images.shape[2]}, ...)",
            )
        try:
            lo, hi = vol.normalized_slab_into(cfg.slices, images[m])
        except DataError as exc:
            raise PatientError(pid, str(exc)) from None
        if hi == lo:
            notes.append(f"patient {pid}: {path.name} is constant ({lo:g}); normalised to zeros")
        notes += [f"patient {pid}: {path.name}: {note}" for note in vol.notes]
        meta["original_shape"].append([x, y, z])
        meta["spacing"].append(list(vol.spacing))
        meta["intensity_min"].append(lo)
        meta["intensity_max"].append(hi)
        meta["source_files"].append(_relative(path, relative_to))
        try:
            meta["axis_codes"].append(vol.axis_codes)
        except DataError as exc:
            raise PatientError(pid, str(exc)) from None
    assert images is not None  # a Patient always has at least one modality file
    if len(set(meta["axis_codes"])) > 1:
        codes = ", ".join(f"{p.name} {c}" for p, c in zip(patient.files, meta["axis_codes"],
                                                          strict=True))  # fmt: skip
        notes.append(
            f"patient {pid}: its volumes have different orientations ({codes}) and are stored "
            "flipped against each other; --canonical reorients every volume to RAS"
        )
    mask = None
    meta.update(NO_MASK)
    if cfg.masks and patient.seg_files:  # a bad segmentation costs the mask, never the images
        try:
            mask, counts = _load_mask(patient, cfg, first_shape, meta["axis_codes"][0])
            meta.update(counts)
        except ValueError as exc:
            notes.append(f"patient {pid}: {exc}; stored without a mask")
    if mask is not None and store.DIRECT_WRITES:
        mask = MaskChunk.encode(mask)
    return PatientResult(pid, patient.label, images, meta, notes, mask)


def _load_mask(
    patient: Patient, cfg: PreprocessConfig, shape: tuple[int, int, int], codes: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The patient's segmentation cropped as its images were (`codes`: their axis codes), and
    its tumour voxel counts. ValueError saying why it cannot be used."""
    if len(patient.seg_files) > 1:
        names = ", ".join(p.name for p in patient.seg_files)
        raise ValueError(f"{len(patient.seg_files)} segmentation files ({names})")
    path = patient.seg_files[0]
    try:
        seg = load_volume(path, canonical=cfg.canonical)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    if seg.data.shape != shape:
        raise ValueError(
            f"{path}: segmentation shape {seg.data.shape} differs from the images' {shape}"
        )
    if axis_codes(seg.affine) != codes:
        raise ValueError(
            f"{path}: segmentation orientation {axis_codes(seg.affine)} differs from the "
            f"images' {codes} (it would be stored flipped; --canonical reorients both)"
        )
    try:
        mask, total, in_slab = label_slab(seg.data, cfg.slices)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return mask, {"has_mask": True, "tumour_voxels": total, "tumour_voxels_in_slab": in_slab}


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def load_or_error(
    patient: Patient, cfg: PreprocessConfig, inplane: tuple[int, int] | None, root: Path
) -> PatientResult | PatientError:
    """Worker entry point: a result, or the patient's error as a value (never a lost traceback)."""
    try:
        return load_patient(patient, cfg, inplane, root)
    except PatientError as exc:
        return exc
    except MemoryError:
        return PatientError(patient.patient_id, "out of memory while loading")


def _inplane_of(patient: Patient) -> tuple[int, int] | None:
    """The (y, x) shape of a patient's first volume from its header alone (no voxel data)."""
    shape = header_shape(patient.files[0])  # None: the worker that loads it says why
    return (int(shape[1]), int(shape[0])) if shape is not None and len(shape) >= 3 else None


def common_inplane(patients: list[Patient]) -> tuple[int, int] | None:
    """The most common in-plane shape among the patients' first volumes (header reads only)."""
    shapes = Counter(s for s in map(_inplane_of, patients) if s is not None)
    return shapes.most_common(1)[0][0] if shapes else None


@dataclass
class PreprocessSummary:
    """What a run did, for the summary line and `smri info`."""

    output: Path
    written: dict[str, int]
    skipped: list[dict[str, str]]
    seconds: float
    warnings: list[str]
    total: int | None = None  # rows in the store after an --append run
    already: int = 0  # patients an --append run found already in the store

    @property
    def n_written(self) -> int:
        return sum(self.written.values())

    def line(self) -> str:
        """The one-line summary printed at the end of `smri preprocess`."""
        per_class = ", ".join(f"{name} {n}" for name, n in self.written.items())
        rate = self.n_written / self.seconds if self.seconds > 0 else float("inf")
        if self.total is not None:
            return (
                f"added {plural(self.n_written, 'patient')} ({per_class}) to {self.output}, now "
                f"{self.total} ({self.already} already there); skipped {len(self.skipped)}; "
                f"{self.seconds:.1f} s ({rate:.2f} patients/s)"
            )
        return (
            f"wrote {plural(self.n_written, 'patient')} ({per_class}) to {self.output}; skipped "
            f"{len(self.skipped)}; {self.seconds:.1f} s ({rate:.2f} patients/s)"
        )


def _none_of(n: int, noun: str) -> str:
    """``its only patient`` (1), ``none of its 3 patients`` (more): of what was found."""
    return f"its only {noun}" if n == 1 else f"none of its {plural(n, noun)}"


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an OUTPUT that exists (without --overwrite) or whose folder is missing/read-only."""
    output = Path(output)
    if output.is_dir():
        raise ConfigError(
            f"{output} is a folder; expected a file name such as out.h5", option="OUTPUT"
        )
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite to replace it")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"{output}: folder {parent} does not exist")
    try:  # a real probe: permissions, read-only mounts and special file systems alike
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{output.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise DataError(f"{output}: folder {parent} is not writable ({exc.strerror})") from None


def check_not_inputs(output: Path, input_dir: Path, labels_csv: Path | None) -> None:
    """ConfigError when the store OUTPUT is, or is inside, what preprocessing reads: INPUT
    (an input scan, `INPUT/x.h5`) or the labels CSV."""
    check_not_input(output, {"INPUT": input_dir, "--labels": labels_csv}, "OUTPUT")


def discover_for_store(
    input_dir: Path,
    cfg: PreprocessConfig,
    labels_csv: Path | None,
    strict: bool,
    echo: Callable[[str], None],
    bids: BidsOptions | None = None,
) -> tuple[Discovery, list[PatientError], dict[str, Any]]:
    """Find the patients, report the unusable ones, and build the config the store records."""
    found = discover(
        input_dir, modalities=cfg.modalities, classes=cfg.classes, labels_csv=labels_csv, bids=bids
    )
    skipped: list[PatientError] = list(found.skipped)
    if strict and skipped:
        raise DataError(f"{skipped[0]} (--strict: {plural(len(skipped), 'patient')} unusable)")
    if not found.patients:
        raise DataError(
            f"{input_dir}: {_none_of(len(skipped), 'patient folder')} is usable; "
            f"first problem: {skipped[0]}"
        )
    for exc in skipped:
        echo(f"skipping {exc}")
    config = {
        **cfg.to_dict(),
        "input": str(Path(input_dir).resolve()),
        "layout": found.layout,
        "labels_csv": str(labels_csv) if labels_csv else None,
    }
    if bids is not None and bids != BidsOptions():  # recorded only when used
        config["bids"] = asdict(bids)
    return found, skipped, config


def _fingerprint(config: dict[str, Any], patients: list[Patient]) -> str:
    """What a resumed run must share with the interrupted one: settings and the patient list."""
    items = [(p.patient_id, p.label, [str(f) for f in [*p.files, *p.seg_files]]) for p in patients]
    blob = json.dumps({"config": config, "patients": items}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _resume(
    output: Path, partial: Path, fingerprint: str, overwrite: bool, echo: Callable[[str], None]
) -> tuple[StoreWriter | None, dict[str, Any]]:
    """Reopen an unfinished store left by an interrupted run, if it matches this one."""
    if not partial.exists():
        return None, {}
    try:
        writer, state = StoreWriter.reopen(output, partial, overwrite=overwrite)
    except LockedError:
        raise
    except DataError as exc:
        echo(f"not resuming: {exc}; starting over")
        partial.unlink()
        return None, {}
    if state.get("fingerprint") != fingerprint:
        writer.close_partial()
        echo(f"not resuming: {partial} was made with other settings or patients; starting over")
        partial.unlink()
        return None, {}
    echo(f"resuming after {state['done']} patients ({state['rows']} written) from {partial}")
    return writer, state


@dataclass
class Run:
    """How a run fans out and reports, and what it has done so far (read after an interrupt too)."""

    backend: str
    jobs: int | None
    scheduler: str | None
    strict: bool
    echo: Callable[[str], None]
    bar: Any  # a tqdm progress bar
    writer: StoreWriter | None = None
    done: int = 0  # patients handled: written or skipped
    added: list[tuple[str, int]] = field(default_factory=list)  # (patient id, label) written
    skipped: list[PatientError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_patients(
    run: Run,
    patients: list[Patient],
    cfg: PreprocessConfig,
    inplane: tuple[int, int] | None,
    root: Path,
    open_writer: Callable[[PatientResult], StoreWriter],
    *,
    merge: StoreReader | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> None:
    """Preprocess `patients` on the run's backend and write them, in the order given.

    The one loop of `smri preprocess` and `--append`. At most ``2 * jobs`` patients are in
    flight; an unusable one is skipped with its reason (or stops the run, `strict`). The first
    result opens the writer (`open_writer`) unless ``run.writer`` is set (a resumed store). With
    `merge` (the store an append adds to), its rows are copied in before each new patient whose
    id sorts after theirs, and the rest at the end. `checkpoint` is called every
    CHECKPOINT_SECONDS. The first Ctrl-C stops between two patients with KeyboardInterrupt.
    """
    old = 0  # next row of `merge` to copy
    with (
        pool(run.backend, run.jobs, run.scheduler, run.echo) as (submit, slots),
        DeferredInterrupt() as interrupt,
    ):
        calls = ((p, cfg, inplane, root) for p in patients)
        results = ordered_map(submit, load_or_error, calls, window=2 * slots)
        last_save = time.perf_counter()
        try:
            for res in results:
                interrupt.check()
                run.bar.update(1)
                if isinstance(res, PatientError):
                    skip(res, run.strict, run.skipped, run.echo)
                else:
                    if run.writer is None:
                        run.writer = open_writer(res)
                    old = _merge_rows(run.writer, merge, old, before=res.patient_id)
                    run.notes += warn(res, run.echo)
                    run.writer.append(
                        images=res.images, label=res.label, patient_id=res.patient_id,
                        meta=res.meta, mask=res.mask,
                    )  # fmt: skip
                    run.added.append((res.patient_id, res.label))
                del res  # the writer has it; don't hold it while waiting for the next
                run.done += 1
                due = time.perf_counter() - last_save >= CHECKPOINT_SECONDS
                if checkpoint is not None and run.writer is not None and due:
                    checkpoint()
                    last_save = time.perf_counter()
        finally:
            results.close()  # stops queued work when the run ends early
    if run.writer is not None:
        _merge_rows(run.writer, merge, old, before=None)


def _merge_rows(
    writer: StoreWriter, merge: StoreReader | None, start: int, before: str | None
) -> int:
    """Copy `merge`'s rows from `start` whose id sorts before `before` (all, if None); next row."""
    if merge is None:
        return start
    i = start
    while i < len(merge) and (before is None or merge.patient_ids[i] < before):
        writer.copy_row(merge, i)
        i += 1
    return i


def run_preprocess(
    input_dir: Path,
    output: Path,
    cfg: PreprocessConfig,
    *,
    jobs: int | None = None,
    labels_csv: Path | None = None,
    overwrite: bool = False,
    strict: bool = False,
    resume: bool = False,
    backend: str = DEFAULT_BACKEND,
    scheduler: str | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
    bids: BidsOptions | None = None,
) -> PreprocessSummary:
    """Preprocess every patient under `input_dir` into the store `output`.

    Broken patients are skipped with a reason (or, with `strict`, stop the run). The store is
    written to a hidden file beside `output` (checkpointed every CHECKPOINT_SECONDS and on
    Ctrl-C) and renamed into place only when complete. Ctrl-C keeps that file; `resume`
    continues from it. Work runs on `backend` (see `smri.parallel`), at most ``2 * jobs``
    patients at a time, so the writer's memory stays bounded whatever the cohort size.
    """
    t0 = time.perf_counter()
    check_backend(backend, scheduler)
    check_not_inputs(output, input_dir, labels_csv)
    check_output(output, overwrite)
    with OutputLock(output):  # before any byte of OUTPUT or its partial file is touched
        remove_unique_partials(output)  # of appends killed before they could clean up
        found, skipped, config = discover_for_store(input_dir, cfg, labels_csv, strict, echo, bids)
        patients = found.patients
        fingerprint = _fingerprint(config, patients)
        partial = partial_path(output)
        writer, state = (
            _resume(output, partial, fingerprint, overwrite, echo) if resume else (None, {})
        )
        if writer is None and partial.exists():  # a stale leftover of an earlier interrupted run
            _remove_stale(partial)
        done = int(state.get("done", 0))
        bar = progress_bar(len(patients), done, "preprocess", progress)
        run = Run(backend, jobs, scheduler, strict, echo, bar, writer=writer, done=done)
        run.skipped = [PatientError(r["patient_id"], r["reason"]) for r in state.get("skipped", [])]

        def open_writer(first: PatientResult) -> StoreWriter:
            return StoreWriter(
                output,
                n_patients=len(patients),
                volume_shape=first.images.shape,
                dtype=cfg.dtype,
                compression=cfg.compression,
                modalities=cfg.modalities,
                classes=cfg.classes,
                config=config,
                overwrite=overwrite,
                tmp_path=partial,
            )

        def save_state() -> None:
            run.writer.checkpoint(
                {"fingerprint": fingerprint, "done": run.done, "skipped": skip_rows(run.skipped)}
            )

        # The store's in-plane shape: the cohort's most common one (header reads only).
        inplane = common_inplane(patients)
        try:
            root = Path(input_dir)
            write_patients(
                run, patients[done:], cfg, inplane, root, open_writer, checkpoint=save_state
            )
            skipped += run.skipped
            if run.writer is None:
                raise DataError(
                    f"{input_dir}: {_none_of(len(skipped), 'patient')} is usable; first "
                    f"problem: {skipped[0]}"
                )
            skipped.sort(key=lambda e: e.patient_id)
            run.writer.set_skipped(skip_rows(skipped))
            labels = run.writer.written(LABELS)
            warn_orientations(run)
            run.writer.commit()
        except KeyboardInterrupt:
            if run.writer is not None:
                save_state()  # everything handled so far, however recent the last checkpoint
                run.writer.close_partial()
                echo(
                    f"interrupted after {run.done} of {len(patients)} patients; {output} was not "
                    f"written; `--resume` continues from {partial}"
                )
            raise
        except BaseException as exc:
            if run.writer is not None:
                run.writer.abort()
            failed = write_error(exc, output)  # h5py's text names the hidden temp file
            if failed is not None:
                raise failed from None
            raise
        finally:
            run.bar.close()
        seconds = time.perf_counter() - t0
        return PreprocessSummary(
            Path(output), per_class(labels, cfg.classes), skip_rows(skipped), seconds, run.notes
        )


def orientation_warning(counts: dict[str, int]) -> str | None:
    """The warning for a store whose patients are not all oriented alike (None when they are).

    `counts`: patients per orientation (`smri.store.orientation_counts`); "unknown" (rows of a
    version-1 store) is left out of the comparison.
    """
    known = {k: n for k, n in counts.items() if k != "unknown"}
    if len(known) < 2:
        return None
    listed = ", ".join(f"{n} {code}" for code, n in known.items())
    return (
        f"the cohort mixes orientations (patients per NIfTI axis codes: {listed}); stored as "
        "read, their arrays are flipped against each other: preprocess with --canonical to "
        "reorient every volume to RAS"
    )


def warn_orientations(run: Run) -> None:
    """Warn once per run when the store's patients mix orientations (all rows, resumed or
    copied ones too)."""
    text = orientation_warning(orientation_counts(run.writer.written("axis_codes")))
    if text:
        run.echo(f"warning: {text}")
        run.notes.append(text)


def progress_bar(total: int, initial: int, desc: str, progress: bool | None) -> Any:
    """A tqdm bar on stderr; shown when `progress`, or (None) when stderr is a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, initial=initial, unit="patient", desc=desc, disable=not show)


def skip(res: PatientError, strict: bool, skipped: list[PatientError], echo: Callable) -> None:
    """Record a patient a worker could not use (or stop the run, with --strict)."""
    if strict:
        raise DataError(f"{res} (--strict)")
    echo(f"skipping {res}")
    skipped.append(res)


def warn(res: PatientResult, echo: Callable[[str], None]) -> list[str]:
    """Print a result's warnings; return them for the summary."""
    for w in res.warnings:
        echo(f"warning: {w}")
    return res.warnings


def per_class(labels: np.ndarray, classes: dict[str, int]) -> dict[str, int]:
    """Patients per class name, the positive class first."""
    names = {v: k for k, v in classes.items()}
    return {names[v]: int(np.sum(labels == v)) for v in sorted(names, reverse=True)}


def skip_rows(errors: list[PatientError]) -> list[dict[str, str]]:
    return [{"patient_id": e.patient_id, "reason": e.reason} for e in errors]


def _remove_stale(partial: Path) -> None:
    """Delete an unfinished store of an earlier run, unless another process is writing it."""
    import h5py

    try:
        with h5py.File(partial, "r+"):
            pass
    except OSError as exc:
        if "lock" in str(exc):
            raise DataError(
                f"{partial}: another smri preprocess is writing this output; wait for it or stop it"
            ) from None
    partial.unlink(missing_ok=True)
