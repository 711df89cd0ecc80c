"""What a preprocessing run reports: its summary line, warnings, skipped patients, progress."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smri.discovery import class_counts_text
from smri.errors import DataError, PatientError, plural
from smri.messages import warning
from smri.preprocessing.patient import PatientResult


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
        per_class = class_counts_text(self.written)
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


def progress_bar(total: int, initial: int, desc: str, progress: bool | None) -> Any:
    """A tqdm bar on stderr; shown when `progress`, or (None) when stderr is a terminal."""
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, initial=initial, unit="patient", desc=desc, disable=not show)


def skip(res: PatientError, strict: bool, skipped: list[PatientError], echo: Callable) -> None:
    """Record a patient a worker could not use (or stop the run, with --strict)."""
    if strict:
        raise DataError(f"{res} (--strict)")
    echo(warning(f"skipping {res}"))
    skipped.append(res)


def warn(res: PatientResult, echo: Callable[[str], None]) -> list[str]:
    """Print a result's warnings; return them for the summary."""
    for w in res.warnings:
        echo(warning(f"warning: {w}"))
    return res.warnings


def per_class(labels: np.ndarray, classes: dict[str, int]) -> dict[str, int]:
    """Patients per class name, the positive class first."""
    names = {v: k for k, v in classes.items()}
    return {names[v]: int(np.sum(labels == v)) for v in sorted(names, reverse=True)}


def skip_rows(errors: list[PatientError]) -> list[dict[str, str]]:
    return [{"patient_id": e.patient_id, "reason": e.reason} for e in errors]
