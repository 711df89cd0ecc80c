"""NaN and Inf in model output: found, and named by store and patient.

Preprocessing never writes a non-finite value, so one in the store means the store is damaged
(`smri.store.StoreReader` refuses every read of one: training input never holds it); one in
the model's output means either that or a model that diverged, and the message says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from smri.store import StoreReader, nonfinite_message


def nonfinite_rows(store: Path, rows: np.ndarray) -> list[tuple[str, int]]:
    """(patient id, count of NaN/Inf values) of the store rows `rows` that hold any."""
    found = []
    with StoreReader(store) as reader:
        for row in np.asarray(rows).tolist():
            images = torch.from_numpy(reader.read(int(row), check=False))
            bad = int((~torch.isfinite(images)).sum())
            if bad:
                found.append((reader.patient_ids[row], bad))
    return found


def nonfinite_output_message(
    store: Path, rows: np.ndarray, ids: Sequence[str], when: str, then: str
) -> str:
    """Why the model's output for store rows `rows` was NaN or Inf (`when`: where it was
    seen): a patient's stored values, named, or (inputs finite) a model that diverged (`then`:
    what was done about it)."""
    found = nonfinite_rows(store, rows)
    if found:
        return nonfinite_message(store, *found[0]) + f" ({when})"
    names = ", ".join(ids[r] for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
    return (
        f"the model's output is not a number (NaN or Inf) for {len(rows)} patient"
        f"{'s' if len(rows) > 1 else ''} ({names}) with finite inputs, {when}: the model "
        f"diverged; {then}"
    )
