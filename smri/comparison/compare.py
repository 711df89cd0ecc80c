"""Compare finished runs: every model's metrics with 95 % intervals, every pair of models on
the same patients, and the baselines beside them. What `smri plot` writes as summary.json
and summary.md.

summary.json is one object:

* ``models``: per run, the best-epoch validation metrics (``mean``/``std`` over folds; one
  split: the values and 0), and ``ci95`` for AUC and balanced accuracy — Student's t across
  folds with K folds, a patient bootstrap of the validation predictions on one split;
* ``comparisons``: per pair of models, the AUC difference b - a, its 95 % interval and a
  p-value from a paired patient bootstrap — computed only when both runs validated the same
  patients in the same folds;
* ``baselines``: the majority class and the intensity logistic regression
  (`smri.metrics.baseline`),
  the latter fitted on each fold's training patients (from the runs' split.json) and scored on
  its validation patients; ``versus_baseline`` compares each model with it, paired.

Nothing in it is NaN: what cannot be computed is null, and ``notes`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from smri.errors import DataError
from smri.metrics import baseline, stats
from smri.training.runs import DAMAGED, read_prediction_table, read_run_json

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
BASELINE = "intensity_logreg"


@dataclass
class Fold:
    """The validation patients of one fold (fold None: the one split) and its training ids."""

    fold: int | None
    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    train: list[str]
    threshold: float = 0.5  # class 1 at and above it (the run's balanced threshold)


@dataclass
class Run:
    """One run folder as the comparison needs it."""

    path: Path
    model: str
    summary: dict[str, Any]
    folds: list[Fold]
    store: str | None
    parts: list[dict[str, Any]] = field(default_factory=list)  # each fold's summary.json

    @property
    def n_folds(self) -> int:
        return len(self.folds)


def read_run(path: Path) -> Run:
    """A finished run folder (one split, or K folds in fold*/); DataError if anything is
    missing or damaged."""
    path = Path(path)
    summary_path = path / "summary.json"
    if not summary_path.exists():
        raise DataError(f"{path}: no summary.json (is the run finished?)")
    summary = read_run_json(summary_path)
    config = read_run_json(path / "config.json") if (path / "config.json").exists() else {}
    fold_dirs = sorted(path.glob("fold*/summary.json"), key=lambda p: int(p.parent.name[4:]))
    dirs = [p.parent for p in fold_dirs] or [path]
    folds, parts = [], []
    for d in dirs:
        pred = d / "predictions.csv"
        if not pred.exists():
            raise DataError(f"{d}: no predictions.csv (is the run finished?)")
        ids, labels, probs, thresholds = read_prediction_table(pred)
        split = read_run_json(d / "split.json") if (d / "split.json").exists() else {}
        try:
            fold = None if d == path else int(d.name[4:])
            train = [str(i) for i in split.get("train", [])]
        except DAMAGED as exc:
            raise DataError(f"{d / 'split.json'}: damaged run file ({exc})") from None
        threshold = float(thresholds[0]) if thresholds.size else 0.5
        folds.append(Fold(fold, ids, labels, probs, train, threshold))
        parts.append(read_run_json(d / "summary.json") if d != path else summary)
    try:
        model = str(summary["model"])
        store = config.get("store", {}).get("path")
    except DAMAGED as exc:
        raise DataError(f"{summary_path}: damaged run file ({type(exc).__name__}: {exc})") from None
    return Run(path, model, summary, folds, store, parts)


# ------------------------------------------------------------------------------ the comparison
def _finite(x: Any) -> float | None:
    """x as a float, or None when it is not a finite number (JSON has no NaN)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def _labels(runs: Sequence[Run]) -> list[str]:
    """Each run's name in the tables: its model, or model@folder when a model repeats."""
    models = [r.model for r in runs]
    return [r.model if models.count(r.model) == 1 else f"{r.model}@{r.path.name}" for r in runs]


def _model_entry(run: Run, label: str, notes: list[str], seed: int) -> dict[str, Any]:
    s = run.summary
    try:
        if "mean" in s:  # K folds
            mean, std = s["mean"], s["std"]
            per_fold = s.get("per_fold") or [p["best"] for p in run.parts]
        else:
            mean, std, per_fold = s["best"], dict.fromkeys(s["best"], 0.0), [s["best"]]
        entry = {
            "run": str(run.path),
            "model": label,
            "parameters": int(s["parameters"]),
            "device": s.get("device_name") or s["device"],
            "folds": run.n_folds,
            "mean": {k: _finite(mean[k]) for k in SUMMARY_METRICS},
            "std": {k: _finite(std[k]) for k in SUMMARY_METRICS},
            "epoch_seconds": _finite(np.mean([p["epoch_seconds_mean"] for p in run.parts])),
            "train_patients_per_s": _finite(np.mean([p["patients_per_s_mean"] for p in run.parts])),
            "majority_baseline_accuracy": _majority(run),
        }
    except DAMAGED as exc:
        raise DataError(
            f"{run.path / 'summary.json'}: damaged run file ({type(exc).__name__}: {exc})"
        ) from None
    ci: dict[str, list[float] | None] = {}
    for metric in stats.METRIC_NAMES:
        if run.n_folds > 1:
            values = [float(f.get(metric, math.nan)) for f in per_fold]
            ci[metric] = _interval(stats.fold_interval(values))
            method = f"Student's t over {run.n_folds} folds"
        else:
            groups = [stats.Group(f.labels, {label: f.probs}, {label: f.threshold})
                      for f in run.folds]  # fmt: skip
            ci[metric] = _interval(stats.bootstrap_interval(groups, label, metric, seed=seed))
            method = f"patient bootstrap ({stats.N_BOOTSTRAP} stratified draws)"
        if ci[metric] is None:
            notes.append(
                f"{label}: no 95 % interval for {metric} (a fold or split with one "
                "class, or a value that is not finite)"
            )
    entry["ci95"] = ci
    entry["ci_method"] = method
    return entry


def _majority(run: Run) -> float | None:
    """Accuracy of always predicting the validation patients' larger class."""
    y = np.concatenate([f.labels for f in run.folds]) if run.folds else np.zeros(0)
    return float(max(y.mean(), 1 - y.mean())) if y.size else None


def _groups(a: Run, b: Run, la: str, lb: str) -> tuple[list[stats.Group] | None, str]:
    """The folds of two runs as paired groups (b aligned to a's patient order), or None and
    why they cannot be paired."""
    fa = {f.fold: f for f in a.folds}
    fb = {f.fold: f for f in b.folds}
    if set(fa) != set(fb):
        return None, f"{la} and {lb} were not validated on the same folds"
    groups = []
    for k, x in fa.items():
        y = fb[k]
        if sorted(x.ids) != sorted(y.ids):
            where = "split" if k is None else f"fold {k}"
            return None, f"{la} and {lb} validated different patients in {where}"
        order = {pid: i for i, pid in enumerate(y.ids)}
        idx = np.array([order[pid] for pid in x.ids])
        if not np.array_equal(x.labels, y.labels[idx]):
            return None, f"{la} and {lb} give the same patients different labels"
        groups.append(stats.Group(x.labels, {la: x.probs, lb: y.probs[idx]},
                                  {la: x.threshold, lb: y.threshold}))  # fmt: skip
    return groups, ""


def _comparison(groups: list[stats.Group], a: str, b: str, seed: int) -> dict[str, Any]:
    d = stats.paired_difference(groups, a, b, "auc", seed=seed)
    return {
        "a": a,
        "b": b,
        "metric": "auc",
        "difference": None if d is None else _finite(d.difference),
        "ci95": None if d is None else _interval(d.ci95),
        "p_value": None if d is None else _finite(d.p_value),
    }


def store_features(store: Path, rows: Sequence[int]) -> np.ndarray:
    """(len(rows), M * 9) intensity features of the given store rows, one patient at a time."""
    from smri.store import StoreReader

    with StoreReader(store) as reader:
        return np.stack([baseline.intensity_features(reader.read(int(i))) for i in rows])


def intensity_baseline(
    run: Run, store: Path | None, notes: list[str]
) -> dict[int | None, np.ndarray] | None:
    """The intensity baseline's probabilities of each fold's validation patients (in the run's
    order), fitted on that fold's training patients; None, with a note, without the store."""
    from smri.store import StoreReader

    path = store if store is not None else (Path(run.store) if run.store else None)
    if path is None or not path.exists():
        notes.append(
            f"intensity baseline not computed: the store {path} is not there (give it with --store)"
        )
        return None
    if any(not f.train for f in run.folds):
        notes.append(
            f"intensity baseline not computed: {run.path} has no split.json with its "
            "training patients"
        )
        return None
    with StoreReader(path) as reader:
        index = {pid: i for i, pid in enumerate(reader.patient_ids)}
        labels = reader.labels.copy()
    wanted = sorted({pid for f in run.folds for pid in (*f.train, *f.ids)})
    missing = [pid for pid in wanted if pid not in index]
    if missing:
        notes.append(
            f"intensity baseline not computed: the store {path} lacks patient "
            f"{missing[0]} of the runs' split ({len(missing)} in all)"
        )
        return None
    rows = [index[pid] for pid in wanted]
    y = labels[rows]
    at = {pid: i for i, pid in enumerate(wanted)}
    train = {f.fold: [at[p] for p in f.train if y[at[p]] >= 0] for f in run.folds}
    if any(np.unique(y[t]).size < 2 for t in train.values()):
        notes.append(
            "intensity baseline not computed: a fold's training patients hold one class only"
        )
        return None
    features = store_features(path, rows)
    return {
        f.fold: baseline.fit_predict(features, y, train[f.fold], [at[p] for p in f.ids])
        for f in run.folds
    }


def _baseline_entry(run: Run, probs: dict[int | None, np.ndarray], seed: int) -> dict[str, Any]:
    groups = [stats.Group(f.labels, {BASELINE: probs[f.fold]}) for f in run.folds]
    entry: dict[str, Any] = {"folds": run.n_folds}
    ci = {}
    for metric in stats.METRIC_NAMES:
        values = [g.point(BASELINE, metric) for g in groups]
        entry[metric] = _finite(np.mean(values))
        ci[metric] = _interval(
            stats.fold_interval(values)
            if run.n_folds > 1
            else stats.bootstrap_interval(groups, BASELINE, metric, seed=seed)
        )
    entry["ci95"] = ci
    return entry


def compare(
    run_dirs: Sequence[Path], store: Path | None = None, *, seed: int = 0
) -> dict[str, Any]:
    """summary.json's object for `run_dirs` (see the module docstring)."""
    runs = [read_run(Path(r)) for r in run_dirs]
    labels = _labels(runs)
    notes: list[str] = []
    models = [_model_entry(r, lab, notes, seed) for r, lab in zip(runs, labels, strict=True)]
    paired: dict[tuple[str, str], list[stats.Group]] = {}
    comparisons = []
    for (ra, la), (rb, lb) in combinations(zip(runs, labels, strict=True), 2):
        groups, why = _groups(ra, rb, la, lb)
        if groups is None:
            notes.append(f"{la} vs {lb}: not compared: {why}")
            comparisons.append(
                {
                    "a": la,
                    "b": lb,
                    "metric": "auc",
                    "difference": None,
                    "ci95": None,
                    "p_value": None,
                }
            )
            continue
        paired[(la, lb)] = groups
        comparisons.append(_comparison(groups, la, lb, seed))
    _add_holm(comparisons)

    majority = [m["majority_baseline_accuracy"] for m in models]
    baselines: dict[str, Any] = {
        "majority": {"accuracy": majority[0] if len(set(majority)) == 1 else None},
        BASELINE: None,
    }
    if len(set(majority)) > 1:
        notes.append(
            "majority baseline: the runs validated different patients; each model's "
            "own is in its row"
        )
    versus = []
    probs = intensity_baseline(runs[0], store, notes) if runs else None
    if probs is not None:
        baselines[BASELINE] = _baseline_entry(runs[0], probs, seed)
        base_run = _with_probs(runs[0], probs)
        for run, lab in zip(runs, labels, strict=True):
            groups, why = _groups(base_run, run, BASELINE, lab)
            if groups is None:
                notes.append(f"{lab} vs the intensity baseline: not compared: {why}")
                continue
            c = _comparison(groups, BASELINE, lab, seed)
            versus.append(
                {
                    "model": lab,
                    "baseline": BASELINE,
                    **{k: c[k] for k in ("metric", "difference", "ci95", "p_value")},
                }
            )
    return {
        "models": models,
        "comparisons": comparisons,
        "baselines": baselines,
        "versus_baseline": versus,
        "bootstrap": {"draws": stats.N_BOOTSTRAP, "level": stats.LEVEL, "seed": seed},
        "notes": notes,
    }


def _with_probs(run: Run, probs: dict[int | None, np.ndarray]) -> Run:
    folds = [Fold(f.fold, f.ids, f.labels, probs[f.fold], f.train) for f in run.folds]  # at 0.5
    return Run(run.path, BASELINE, run.summary, folds, run.store, run.parts)


def _add_holm(comparisons: list[dict[str, Any]]) -> None:
    """Holm-adjusted p-values over the pairs that could be compared."""
    done = [c for c in comparisons if c["p_value"] is not None]
    for c, p in zip(done, stats.holm([c["p_value"] for c in done]), strict=True):
        c["p_value_holm"] = p
    for c in comparisons:
        c.setdefault("p_value_holm", None)
