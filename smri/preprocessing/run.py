"""The parent's run: NIfTI patient folders -> one HDF5 store, the parent the only writer.

`run_preprocess` fans `smri.preprocessing.patient.load_patient` out (threads, processes or a
Dask cluster, see `smri.parallel`) and streams the results, in sorted patient order, into a
`StoreWriter`. At most ``2 * jobs`` patients are in flight, so memory stays bounded whatever the
cohort size.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from smri.atomic import OutputLock, check_not_input, partial_path, remove_unique_partials
from smri.discovery import BidsOptions, Discovery, Patient, discover
from smri.errors import ConfigError, DataError, PatientError, plural
from smri.messages import python_log, warning
from smri.parallel import DEFAULT_BACKEND, DeferredInterrupt, check_backend, ordered_map, pool
from smri.preprocessing.patient import (
    PatientResult,
    PreprocessConfig,
    common_inplane,
    load_or_error,
)
from smri.preprocessing.summary import (
    PreprocessSummary,
    orientation_warning,
    per_class,
    progress_bar,
    skip,
    skip_rows,
    warn,
)
from smri.store import (
    LABELS,
    LockedError,
    StoreReader,
    StoreWriter,
    orientation_counts,
    write_error,
)

# How often the unfinished store is flushed with its resume state: a crash loses at most this
# much work. Flushing after every patient cost 4-19 ms each, taken from the workers on 2 cores.
CHECKPOINT_SECONDS = 1.0


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
    """Find the patients, report the unusable ones, and build the config the store records
    (with the class names `cfg` gives, else those discovery found: ``found.classes``)."""
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
        echo(warning(f"skipping {exc}"))
    config = {
        **replace(cfg, classes=found.classes).to_dict(),
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
        echo(warning(f"not resuming: {exc}; starting over"))
        partial.unlink()
        return None, {}
    if state.get("fingerprint") != fingerprint:
        writer.close_partial()
        echo(warning(f"not resuming: {partial} was made with other settings or patients; "
                     "starting over"))  # fmt: skip
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
    echo: Callable[[str], None] = python_log,
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
        cfg = replace(cfg, classes=found.classes)  # the store's names, from here on
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
        inplane = common_inplane(patients, cfg.canonical)
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


def warn_orientations(run: Run) -> None:
    """Warn once per run when the store's patients mix orientations (all rows, resumed or
    copied ones too)."""
    text = orientation_warning(orientation_counts(run.writer.written("axis_codes")))
    if text:
        run.echo(warning(f"warning: {text}"))
        run.notes.append(text)


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
