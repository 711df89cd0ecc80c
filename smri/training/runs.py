"""Run-folder files: config/split/summary JSON, metrics.csv, predictions.csv, K-fold merges."""

from __future__ import annotations

import csv
import json
import math
import platform
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smri.atomic import atomic_open, write_text
from smri.data import Split
from smri.errors import ConfigError, DataError
from smri.files import check_regular
from smri.version import __version__

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_auc",
    "val_sensitivity",
    "val_specificity",
    "lr",
    "seconds",
    "patients_per_s",
)


def split_json(split: Split, ids: list[str], held_out: Sequence[str] = ()) -> dict[str, Any]:
    """split.json content: patient ids of each side, how the split was made, and the store's
    patients held out as the untouched test set (when a holdout list was given)."""
    return {
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "folds": split.folds,
        "fold": split.fold,
        "train": [ids[i] for i in split.train],
        "val": [ids[i] for i in split.val],
        **({"held_out": list(held_out)} if held_out else {}),
    }


def versions() -> dict[str, str | None]:
    import h5py
    import torch

    return {
        "smri": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
    }


def read_metrics(path: Path, upto: int | None = None) -> list[dict[str, float]]:
    """metrics.csv's rows (epochs up to `upto`); none for a missing file, DataError for a
    damaged one."""
    return read_metrics_csv(path, upto) if path.exists() else []


Rows = list[dict[str, float]]
# what a damaged run file raises while it is parsed: named as the file's problem, one line
DAMAGED = (ValueError, TypeError, KeyError, IndexError, AttributeError, csv.Error)


def read_metrics_csv(path: Path, upto: int | None = None) -> Rows:
    """metrics.csv as a list of float rows (epochs up to `upto`); DataError if it is damaged."""
    try:
        with open(check_regular(path), newline="") as fh:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        return [r for r in rows if upto is None or r["epoch"] <= upto]
    except DAMAGED as exc:
        raise DataError(f"{path}: damaged metrics file ({type(exc).__name__}: {exc})") from None


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Patient ids, labels and probabilities of class 1 from predictions.csv (unlabelled rows
    dropped); DataError if it is damaged or holds a probability that is not a number in [0, 1]."""
    ids, labels, probs, _ = read_prediction_table(path)
    return ids, labels, probs


def read_prediction_table(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """`read_predictions` and each row's decision threshold (0.5 where the file predates the
    threshold column: uncalibrated probabilities, class 1 at 0.5)."""
    try:
        with open(check_regular(path), newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["label"]) >= 0]
        ids = [r["patient_id"] for r in rows]
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        probs = np.array([float(r["probability"]) for r in rows], dtype=np.float64)
        thresholds = np.array([float(r.get("threshold") or 0.5) for r in rows], dtype=np.float64)
    except DAMAGED as exc:
        raise DataError(f"{path}: damaged predictions file ({type(exc).__name__}: {exc})") from None
    for name, values in (("probability", probs), ("threshold", thresholds)):
        bad = np.flatnonzero(~((values >= 0) & (values <= 1)))  # NaN fails both
        if bad.size:
            raise DataError(
                f"{path}: patient {ids[bad[0]]} has {name} {values[bad[0]]}; expected a number "
                "in [0, 1]"
            )
    return ids, labels, probs, thresholds


def read_predictions_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from predictions.csv (unlabelled rows dropped)."""
    _, labels, probs = read_predictions(path)
    return labels, probs


def read_run_json(path: Path) -> Any:
    """A run folder's JSON file (config.json, summary.json); DataError if it is not JSON."""
    try:
        return json.loads(check_regular(path).read_text())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: damaged run file ({type(exc).__name__}: {exc})") from None


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in METRIC_COLUMNS})


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def write_predictions(
    path: Path,
    ids: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: dict[str, int],
    fold: int | None = None,
    threshold: float = 0.5,
) -> None:
    """predictions.csv: patient_id, label, probability of class 1 (calibrated), predicted class
    (class 1 at and above `threshold`), fold, and the threshold."""
    names = {v: k for k, v in classes.items()}
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "label", "probability", "predicted", "fold", "threshold"])
        for pid, y, p in zip(ids, labels, probs, strict=True):
            pred = names.get(int(p >= threshold), str(int(p >= threshold)))
            writer.writerow([pid, int(y), f"{p:.6f}", pred, "" if fold is None else fold,
                             f"{threshold:.6f}"])  # fmt: skip


# --------------------------------------------------------------------------- run folders, folds
def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless --overwrite (and then only an smri run folder)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder", option="--out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} exists and is not empty; choose another --out, add --overwrite, "
                f"or continue it with --resume {out}",
                option="--out",
            )
        if not (out / "config.json").exists():
            raise ConfigError(
                f"{out} is not an smri run folder (no config.json); not deleting it",
                option="--out",
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def fold_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample standard deviation (ddof=1; 0 for one value) over folds (or every
    training of a run) of each best-epoch validation metric."""
    keys = summaries[0]["best"].keys()
    return {
        "model": summaries[0]["model"],
        "parameters": summaries[0]["parameters"],
        "device": summaries[0]["device"],
        "device_name": summaries[0].get("device_name"),
        "folds": len(summaries),
        "mean": {k: float(np.mean([_nan(s["best"][k]) for s in summaries])) for k in keys},
        "std": {k: _sample_std([_nan(s["best"][k]) for s in summaries]) for k in keys},
        "std_ddof": 1,
        "per_fold": [s["best"] for s in summaries],
        "epoch_seconds_mean": float(np.mean([s["epoch_seconds_mean"] for s in summaries])),
        "patients_per_s_mean": float(np.mean([s["patients_per_s_mean"] for s in summaries])),
    }


def _sample_std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _nan(x: float | None) -> float:
    """A metric read back from JSON: null (not computable) is NaN again."""
    return math.nan if x is None else float(x)


def summary_line(summary: dict[str, Any]) -> str:
    """One line: the K-fold mean ± std of accuracy, balanced accuracy and AUC."""
    parts = [
        f"{k} {summary['mean'][k]:.3f} ± {summary['std'][k]:.3f}"
        for k in ("accuracy", "balanced_accuracy", "auc")
    ]
    return f"{summary['folds']}-fold cross-validation: " + ", ".join(parts)


def member_dirs(run: Path, marker: str = "summary.json") -> list[tuple[str, Path]]:
    """The trainings of a run folder that hold `marker`, in order of seed then fold, as
    (name, folder): seed1/fold3 and seed1 with repeats (`--seeds`), fold3 with K folds, or
    the run itself ("") for one split."""
    found = []
    for d in [*run.glob("fold*"), *run.glob("seed*"), *run.glob("seed*/fold*")]:
        name = d.relative_to(run).as_posix()
        match = re.fullmatch(r"(?:seed([0-9]+))?/?(?:fold([0-9]+))?", name)
        if match and name and (d / marker).is_file():
            found.append(((int(match[1] or 0), int(match[2] or -1)), name, d))
    if any("/" in name for _, name, _ in found):  # seed{r} summarises seed{r}/fold*: not a member
        found = [f for f in found if "/" in f[1]]
    found.sort()
    if not found:
        return [("", run)] if (run / marker).is_file() else []
    return [(name, d) for _, name, d in found]


def merge_predictions(out: Path, folds: int) -> None:
    """Out-of-fold predictions of every fold in one predictions.csv."""
    lines: list[str] = []
    for k in range(folds):
        text = (out / f"fold{k}" / "predictions.csv").read_text().splitlines()
        lines.extend(text if not lines else text[1:])
    write_text(out / "predictions.csv", "\n".join(lines) + "\n")
