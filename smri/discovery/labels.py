"""Labels from a CSV (``--labels``, or BraTS 2020's ``name_mapping.csv``): patient id -> 0/1,
and the class names the label column gives (`smri.discovery.patients.column_classes`)."""

from __future__ import annotations

import csv
from pathlib import Path

from smri.discovery.patients import column_classes
from smri.errors import DataError
from smri.files import check_regular

BRATS2020_ID_COLUMN = "BraTS_2020_subject_ID"
BRATS2020_GRADE_COLUMN = "Grade"
ID_COLUMNS = ("patient_id", "subject_id", "id", BRATS2020_ID_COLUMN)
LABEL_COLUMNS = ("label", "class", "grade", BRATS2020_GRADE_COLUMN)


def read_labels_csv(path: Path, classes: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(patient id -> label, class names) from a CSV whose label column holds 0/1 or names of
    `classes`: the names are `classes` when the column uses them, else ``"0"`` and ``"1"``."""
    try:
        with open(check_regular(path), newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read labels CSV ({exc})") from None
    lower = {c.strip().lower(): c for c in columns if c}
    id_col = next((lower[c.lower()] for c in ID_COLUMNS if c.lower() in lower), None)
    label_col = next((lower[c.lower()] for c in LABEL_COLUMNS if c.lower() in lower), None)
    if id_col is None or label_col is None:
        raise DataError(
            f"{path}: labels CSV needs a patient id column ({', '.join(ID_COLUMNS)}) "
            f"and a label column ({', '.join(LABEL_COLUMNS)}); found columns "
            f"{', '.join(columns) or 'none'}"
        )
    by_name = {name.lower(): value for name, value in classes.items()}
    labels: dict[str, int] = {}
    named = False
    for line, row in enumerate(rows, start=2):
        pid = (row.get(id_col) or "").strip()
        raw = (row.get(label_col) or "").strip()
        if not pid:
            continue
        if raw in ("0", "1"):
            value = int(raw)
        elif raw.lower() in by_name:
            value, named = by_name[raw.lower()], True
        else:
            raise DataError(
                f"{path}, line {line}: patient {pid} has label {raw!r}; expected 0, 1 "
                f"or a class name ({', '.join(classes)})"
            )
        if pid in labels and labels[pid] != value:
            raise DataError(
                f"{path}, line {line}: patient {pid} listed twice with different labels"
            )
        labels[pid] = value
    if not labels:
        raise DataError(f"{path}: labels CSV has no rows")
    return labels, column_classes(named, classes)
