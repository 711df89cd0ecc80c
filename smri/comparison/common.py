"""What the validation comparison (`compare`) and the test block (`testset`) share: numbers
made JSON-safe, and the intensity baseline's features of store rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smri.metrics import baseline

BASELINE = "intensity_logreg"


def finite(x: Any) -> float | None:
    """x as a float, or None when it is not a finite number (JSON has no NaN)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def as_interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def store_features(store: Path, rows: Sequence[int]) -> np.ndarray:
    """(len(rows), M * 9) intensity features of the given store rows, one patient at a time."""
    from smri.store import StoreReader

    with StoreReader(store) as reader:
        return np.stack([baseline.intensity_features(reader.read(int(i))) for i in rows])
