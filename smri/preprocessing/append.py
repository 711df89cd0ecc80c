"""`smri preprocess --append`: add a cohort's new patients to an existing store.

The existing store is never modified in place. A new complete store is written beside it — old
rows copied in (compressed chunks as their stored bytes), new results merged in, all in sorted
patient order — and renamed over it at the end, so an interrupted or failed append leaves it as
it was. The loop is preprocessing's own (`smri.preprocessing.run.write_patients`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from smri.atomic import OutputLock, remove_unique_partials
from smri.discovery import BidsOptions, Patient
from smri.errors import ConfigError, DataError, PatientError
from smri.messages import python_log
from smri.parallel import DEFAULT_BACKEND, check_backend
from smri.preprocessing.patient import PatientResult, PreprocessConfig, common_inplane
from smri.preprocessing.run import (
    Run,
    check_not_inputs,
    discover_for_store,
    warn_orientations,
    write_patients,
)
from smri.preprocessing.summary import PreprocessSummary, per_class, progress_bar, skip_rows
from smri.store import StoreInfo, StoreReader, StoreWriter, write_error
from smri.version import __version__

# Settings a store and an --append run must share: (PreprocessConfig field, CLI option).
SETTINGS = (
    ("modalities", "--modalities"),
    ("slices", "--slices"),
    ("dtype", "--dtype"),
    ("compression", "--compression"),
    ("canonical", "--canonical"),
    ("classes", "--classes"),
)


def store_settings(info: StoreInfo) -> dict[str, Any]:
    """The settings of an existing store, read from its datasets where they say it."""
    return {
        "modalities": tuple(info.modalities),
        "slices": info.slices,
        "dtype": info.dtype,
        "compression": info.compression or "none",
        "canonical": bool(info.config.get("canonical", False)),
        "classes": dict(info.classes),
    }


def check_settings(info: StoreInfo, cfg: PreprocessConfig) -> None:
    """ConfigError naming the first setting where `cfg` differs from the store, with both values."""
    have = store_settings(info)
    for name, option in SETTINGS:
        if have[name] != getattr(cfg, name):
            raise ConfigError(
                f"{info.path} was made with {_flag(option, have[name])}; this run has "
                f"{_flag(option, getattr(cfg, name))} (--append needs the store's settings)",
                option=option,
            )


def _flag(option: str, value: Any) -> str:
    if isinstance(value, bool):
        return option if value else f"--no-{option[2:]}"
    if isinstance(value, tuple):
        value = ",".join(value)
    elif isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    return f"{option} {value}"


def append_preprocess(
    input_dir: Path,
    output: Path,
    cfg: PreprocessConfig,
    *,
    jobs: int | None = None,
    labels_csv: Path | None = None,
    strict: bool = False,
    backend: str = DEFAULT_BACKEND,
    scheduler: str | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] = python_log,
    bids: BidsOptions | None = None,
) -> PreprocessSummary:
    """Add the patients of `input_dir` that the store `output` lacks; keep rows sorted by id.

    Patients already in the store are skipped with a line saying so (never rewritten). The
    store's root attrs record the run: skipped lists merged, an ``appended`` entry in the config.
    """
    t0 = time.perf_counter()
    check_backend(backend, scheduler)
    output = Path(output)
    check_not_inputs(output, input_dir, labels_csv)
    if not output.is_file():
        raise DataError(f"{output}: no such store; --append adds to an existing smri store")
    with OutputLock(output):  # before the store is read: another run may be replacing it
        return _append(input_dir, output, cfg, t0, jobs=jobs, labels_csv=labels_csv,
                       strict=strict, backend=backend, scheduler=scheduler, progress=progress,
                       echo=echo, bids=bids)  # fmt: skip


def _append(
    input_dir: Path,
    output: Path,
    cfg: PreprocessConfig,
    t0: float,
    *,
    jobs: int | None,
    labels_csv: Path | None,
    strict: bool,
    backend: str,
    scheduler: str | None,
    progress: bool | None,
    echo: Callable[[str], None],
    bids: BidsOptions | None,
) -> PreprocessSummary:
    """`append_preprocess` while holding OUTPUT's lock."""
    remove_unique_partials(output)  # of appends killed before they could clean up
    base = StoreReader(output)
    run: Run | None = None
    try:
        if cfg.classes is None:  # not given: the store's names, and labels read with them
            cfg = replace(cfg, classes=dict(base.info.classes))
        check_settings(base.info, cfg)
        found, skipped, config = discover_for_store(input_dir, cfg, labels_csv, strict, echo, bids)
        present = set(base.patient_ids)
        already = [p.patient_id for p in found.patients if p.patient_id in present]
        for pid in already:
            echo(f"skipping patient {pid}: already in {output}")
        patients = [p for p in found.patients if p.patient_id not in present]
        if not patients:
            echo(f"nothing to append: every usable patient of {input_dir} is already in {output}")
            return _summary(output, [], skipped, t0, [], cfg, len(base), len(already))
        h, w = base.info.volume_shape[2:]
        _check_inplane(input_dir, patients, cfg, (h, w))

        def open_writer(_first: PatientResult) -> StoreWriter:
            return StoreWriter(
                output,
                n_patients=len(base) + len(patients),
                volume_shape=base.info.volume_shape,
                dtype=base.info.dtype,
                compression=cfg.compression,
                modalities=cfg.modalities,
                classes=cfg.classes,
                config=base.info.config,
                overwrite=True,
            )

        bar = progress_bar(len(patients), 0, "append", progress)
        run = Run(backend, jobs, scheduler, strict, echo, bar)
        root = Path(input_dir)
        write_patients(run, patients, cfg, (h, w), root, open_writer, merge=base)
        if run.writer is None:
            raise DataError(
                f"{input_dir}: all {len(patients)} new patients are unusable; first problem: "
                f"{run.skipped[0]}; {output} is unchanged"
            )
        skipped += run.skipped
        skipped.sort(key=lambda e: e.patient_id)
        added = [pid for pid, _ in run.added]
        run.writer.set_skipped(_merged_skipped(base, skipped, added))
        entry = _history_entry(config, cfg, len(added), len(already), len(skipped))
        history = [*base.info.config.get("appended", []), entry]
        run.writer.set_config({**base.info.config, "appended": history})
        total = int(run.writer.rows)
        warn_orientations(run)
        base.close()
        run.writer.commit()
    except BaseException as exc:
        if run is not None and run.writer is not None:
            run.writer.abort()
        if run is not None and isinstance(exc, KeyboardInterrupt):
            echo(f"interrupted; {output} is unchanged")
        failed = write_error(exc, output)  # h5py's text names the hidden temp file
        if failed is not None:
            raise failed from None
        raise
    finally:
        base.close()
        if run is not None:
            run.bar.close()
    labels = [label for _, label in run.added]
    return _summary(output, labels, skipped, t0, run.notes, cfg, total, len(already))


def _check_inplane(
    input_dir: Path, patients: list[Patient], cfg: PreprocessConfig, shape: tuple[int, int]
) -> None:
    """DataError unless the new cohort's common in-plane shape is the store's `shape`."""
    inplane = common_inplane(patients, cfg.canonical)
    if inplane is not None and inplane != shape:
        raise DataError(
            f"{input_dir}: in-plane shape {inplane[1]}x{inplane[0]} (the most common in this "
            f"cohort) differs from the store's {shape[1]}x{shape[0]}; --append needs volumes "
            "of that shape"
        )


def _history_entry(
    config: dict[str, Any], cfg: PreprocessConfig, added: int, already: int, skipped: int
) -> dict[str, Any]:
    """The record of one append, kept in the store's config under ``appended``."""
    return {
        "input": config["input"],
        "layout": config["layout"],
        "labels_csv": config["labels_csv"],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "smri_version": __version__,
        "added": added,
        "already_in_store": already,
        "skipped": skipped,
        "masks": cfg.masks,
    }


def _merged_skipped(
    base: StoreReader, skipped: list[PatientError], added: list[str]
) -> list[dict[str, str]]:
    """The store's skipped list, less patients now added or skipped again, plus this run's.

    A patient this run could not use but the store already holds is not listed: it is there.
    """
    present = set(base.patient_ids)
    new = [e for e in skipped if e.patient_id not in present]
    drop = set(added) | {e.patient_id for e in new}
    rows = [r for r in base.info.skipped if r["patient_id"] not in drop] + skip_rows(new)
    return sorted(rows, key=lambda r: r["patient_id"])


def _summary(
    output: Path,
    labels: list[int],
    skipped: list[PatientError],
    t0: float,
    notes: list[str],
    cfg: PreprocessConfig,
    total: int,
    already: int,
) -> PreprocessSummary:
    return PreprocessSummary(
        output,
        per_class(np.asarray(labels, dtype=np.int8), cfg.classes),
        skip_rows(skipped),
        time.perf_counter() - t0,
        notes,
        total=total,
        already=already,
    )
