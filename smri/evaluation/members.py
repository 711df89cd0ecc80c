"""A finished run on the untouched test patients: every training of the run (each fold, each
seed) scores the same patients, so the comparison can resample both the patients and the
trained models (smri.metrics.heldout).

A test patient must be one that no training of the run saw: each member's split.json is
checked, and a patient it trained or validated on is refused, never scored.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smri.atomic import atomic_open
from smri.errors import DataError, plural
from smri.evaluation.inference import evaluate_store
from smri.metrics import binary_metrics
from smri.metrics.calibration import brier, ece
from smri.metrics.heldout import Members, ensemble_auc
from smri.store import StoreReader
from smri.training.runs import DAMAGED, member_dirs, read_run_json

COLUMNS = ("member", "patient_id", "label", "probability", "predicted", "threshold")


@dataclass
class RunEvaluation:
    """Every member's calibrated probabilities of class 1 on the same test patients."""

    patient_ids: list[str]
    labels: np.ndarray
    members: list[str]  # "fold3", "seed1/fold3", ... ("" for a run of one split)
    probabilities: np.ndarray  # (members, patients)
    thresholds: np.ndarray  # (members,): class 1 at and above
    classes: dict[str, int]

    def as_members(self) -> Members:
        """What smri.metrics.heldout resamples (labelled patients only)."""
        known = self.labels >= 0
        probs = self.probabilities[:, known]
        return Members(tuple(self.members), probs, probs >= self.thresholds[:, None])


def check_untouched(run: Path, members: list[tuple[str, Path]], patients: Sequence[str]) -> None:
    """DataError when a training of `run` trained or validated on one of `patients`."""
    wanted = set(patients)
    for name, folder in members:
        try:
            split = read_run_json(folder / "split.json")
            seen = {str(p) for p in (*split["train"], *split["val"])}
        except (*DAMAGED, OSError) as exc:
            raise DataError(
                f"{folder / 'split.json'}: cannot tell which patients this training saw "
                f"({type(exc).__name__}: {exc}); its test scores would not be trustworthy"
            ) from None
        touched = sorted(wanted & seen)
        if touched:
            where = f"{run / name}" if name else str(run)
            raise DataError(
                f"{where} trained or validated on {plural(len(touched), 'patient')} of the "
                f"test set ({touched[0]}, ...): those are not untouched test patients"
            )


def evaluate_run(
    run: Path,
    store: Path,
    *,
    patients: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    cache: str = "auto",
    workers: int = 0,
    progress: bool = False,
) -> RunEvaluation:
    """Every member's best.pt on the patients of `store` (or `patients` only)."""
    members = member_dirs(Path(run), "best.pt")
    if not members:
        raise DataError(f"{run}: no training with a best.pt (is the run finished?)")
    if patients is None:
        with StoreReader(store) as reader:
            patients = list(reader.patient_ids)
    check_untouched(Path(run), members, patients)  # before anything is scored
    results = []
    for _name, folder in members:
        ev = evaluate_store(folder / "best.pt", store, device=device, batch_size=batch_size,
                            cache=cache, workers=workers, progress=progress,
                            patients=patients)  # fmt: skip
        results.append(ev)
    first = results[0]
    return RunEvaluation(
        first.patient_ids,
        first.labels,
        [name for name, _ in members],
        np.stack([ev.probabilities for ev in results]),
        np.array([ev.threshold for ev in results], dtype=np.float64),
        first.classes,
    )


def metrics_of(ev: RunEvaluation) -> dict[str, Any]:
    """Each member's metrics on the labelled test patients, their mean, and the ensemble's
    (the members' mean probability) AUC."""
    known = ev.labels >= 0
    y = ev.labels[known]
    per = []
    for name, p, t in zip(ev.members, ev.probabilities[:, known], ev.thresholds, strict=True):
        per.append({"member": name, **binary_metrics(y, p, t), "brier": brier(y, p),
                    "ece": ece(y, p), "threshold": float(t)})  # fmt: skip
    keys = [k for k in per[0] if k not in ("member", "threshold")] if per else []
    return {
        "n": int(known.sum()),
        "members": per,
        "mean": {k: float(np.mean([m[k] for m in per])) for k in keys},
        "ensemble_auc": ensemble_auc(y, ev.as_members()) if y.size else None,
    }


def write_run_predictions(path: Path, ev: RunEvaluation) -> None:
    """predictions.csv of a run on test patients: one row per member and patient."""
    names = {v: k for k, v in ev.classes.items()}
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for name, probs, t in zip(ev.members, ev.probabilities, ev.thresholds, strict=True):
            for pid, y, p in zip(ev.patient_ids, ev.labels, probs, strict=True):
                pred = names.get(int(p >= t), str(int(p >= t)))
                writer.writerow([name, pid, int(y), f"{p:.6f}", pred, f"{t:.6f}"])


def read_run_predictions(path: Path) -> RunEvaluation:
    """`write_run_predictions`'s file back (labelled patients only); DataError when damaged or
    when the members did not score the same patients."""
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["label"]) >= 0]
        members = list(dict.fromkeys(r["member"] for r in rows))
        by = {m: [r for r in rows if r["member"] == m] for m in members}
        ids = [r["patient_id"] for r in by[members[0]]] if members else []
        if any([r["patient_id"] for r in by[m]] != ids for m in members):
            raise ValueError("the members did not score the same patients")
        labels = np.array([int(r["label"]) for r in by[members[0]]] if members else [])
        probs = np.array([[float(r["probability"]) for r in by[m]] for m in members])
        thresholds = np.array([float(by[m][0]["threshold"]) for m in members])
    except (*DAMAGED, OSError) as exc:
        raise DataError(f"{path}: damaged test predictions ({type(exc).__name__}: {exc})") from None
    if not members or not ((probs >= 0) & (probs <= 1)).all():
        raise DataError(
            f"{path}: damaged test predictions (no rows, or a probability outside [0, 1])"
        )
    return RunEvaluation(ids, labels, members, probs, thresholds, {})
