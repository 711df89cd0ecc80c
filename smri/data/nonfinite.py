"""NaN and Inf in training input or model output: found, and named by store and patient.

Preprocessing never writes a non-finite value, so one in the store means the store is damaged;
one in the model's output means either that or a model that diverged, and the message says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from smri.errors import DataError
from smri.store import StoreReader


def check_finite(images: torch.Tensor, rows: np.ndarray, reader: StoreReader) -> None:
    """DataError naming the store and the first patient of `images` ``(K, M, S, H, W)``
    (store rows `rows`) that holds NaN or Inf: preprocessing never writes one, so the store is
    damaged, and a single one turns a whole batch's loss into NaN. Costs one min/max pass."""
    lo, hi = torch.aminmax(images)
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    for k, row in enumerate(np.asarray(rows).tolist()):
        bad = int((~torch.isfinite(images[k])).sum())
        if bad:
            raise DataError(nonfinite_message(reader.path, reader.patient_ids[row], bad))


def nonfinite_message(store: Path, patient_id: str, count: int) -> str:
    """What to say of a store patient holding `count` NaN or Inf values."""
    voxels = "voxel" if count == 1 else "voxels"
    return (
        f"{store}: patient {patient_id} holds {count} non-finite {voxels} (NaN or Inf), which "
        "preprocessing never writes: the store is damaged; make it again with `smri preprocess`"
    )


def nonfinite_rows(store: Path, rows: np.ndarray) -> list[tuple[str, int]]:
    """(patient id, count of NaN/Inf values) of the store rows `rows` that hold any."""
    found = []
    with StoreReader(store) as reader:
        for row in np.asarray(rows).tolist():
            images = torch.from_numpy(reader.read(int(row)))
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
