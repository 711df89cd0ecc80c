"""The untouched test patients of a cohort: a stratified share set aside before any training,
recorded in a CSV (``patient_id,label``) that `smri train --holdout` keeps out of training and
validation, and `smri evaluate --holdout` scores at the end.

The file, not a seed, is the record: a run names it in config.json and lists the patients it
kept out in split.json, so what was held out can be checked after the fact.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smri.atomic import atomic_open
from smri.data.splits import stratified_split
from smri.errors import DataError
from smri.files import check_regular

COLUMNS = ("patient_id", "label")
MAX_BYTES = 64 * 2**20  # a list of patient ids: far less; more is not a holdout file
HOLDOUT_SALT = 0x7E57  # its own random stream: never the validation split of the same seed


def holdout_rows(
    labels: np.ndarray, classes: dict[str, int], fraction: float, seed: int
) -> np.ndarray:
    """Rows of a stratified `fraction` of the labelled patients (each class keeps its share,
    at least one patient of each goes each way), sorted."""
    return stratified_split(labels, classes, fraction, seed, salt=HOLDOUT_SALT).val


def write_holdout(path: Path, ids: Sequence[str], labels: Sequence[int]) -> None:
    """The holdout CSV, written beside and renamed into place."""
    with atomic_open(Path(path), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows([pid, int(y)] for pid, y in zip(ids, labels, strict=True))


def read_holdout(path: Path) -> list[str]:
    """The patient ids of a holdout CSV (a ``patient_id`` column; other columns ignored).
    DataError naming the file when it cannot be read, lacks the column or lists no patient."""
    path = Path(path)
    try:
        if check_regular(path).stat().st_size > MAX_BYTES:
            raise DataError(f"{path}: {path.stat().st_size:,} bytes is not a holdout list")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "patient_id" not in (reader.fieldnames or []):
                found = ", ".join(reader.fieldnames or []) or "none"
                raise DataError(f"{path}: a holdout list needs a patient_id column; found {found}")
            ids = [(row["patient_id"] or "").strip() for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the holdout list ({exc})") from None
    ids = sorted({pid for pid in ids if pid})
    if not ids:
        raise DataError(f"{path}: the holdout list names no patient")
    return ids
