"""Compare finished runs: every model's metrics with 95 % intervals, every pair of models on
the same patients, and the baselines beside them. What `smri plot` writes as summary.json
and summary.md.

summary.json is one object:

* ``models``: per run, the best-epoch validation metrics (``mean`` and ``std``, the sample
  standard deviation, over its trainings: folds, and seeds with repeated training; one split:
  the values and 0), and ``ci95`` for AUC and balanced accuracy — Student's t over the folds
  (each fold's mean over seeds), clipped to [0, 1] with ``ci95_clipped`` saying where; a
  patient bootstrap of the validation predictions on one split;
* ``comparisons``: per pair of models, the AUC difference b - a over the trainings both runs
  share (the same folds and seeds), its 95 % interval and p-value from the corrected resampled
  t-test of Nadeau and Bengio, which includes how much training varies; on one split (nothing
  to resample) a paired patient bootstrap, which conditions on the two trained networks;
* ``baselines``: the majority class and the intensity logistic regression
  (`smri.metrics.baseline`), the latter fitted on each training's own training patients (its
  split.json) and scored on its validation patients; ``versus_baseline`` compares each model
  with it by the same test as ``comparisons``. Holm's correction runs over ``comparisons`` and
  ``versus_baseline`` together (``holm_family``);
* ``test`` (with `test=`): the untouched test patients, `smri.comparison.testset`.

Validation numbers were used for selection (the best epoch, smri's defaults); the ``test``
block is what no choice saw. Nothing in it is NaN: what cannot be computed is null, and
``notes`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from smri.comparison.common import BASELINE, as_interval, finite, store_features
from smri.errors import DataError
from smri.metrics import baseline, stats
from smri.training.runs import DAMAGED, member_dirs, read_prediction_table, read_run_json

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")


@dataclass
class Fold:
    """One training's validation patients (name: fold3, seed1/fold3, or "" for the one split),
    their predictions, and the ids it trained on."""

    name: str
    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    train: list[str]
    threshold: float = 0.5  # class 1 at and above it (the run's balanced threshold)

    @property
    def fold(self) -> str:
        """The fold it validates, whatever the seed: what trainings of one fold share."""
        return self.name.split("/")[-1] if "/" in self.name else self.name


@dataclass
class Run:
    """One run folder as the comparison needs it."""

    path: Path
    model: str
    summary: dict[str, Any]
    folds: list[Fold]
    store: str | None
    parts: list[dict[str, Any]] = field(default_factory=list)  # each training's summary.json

    @property
    def n_folds(self) -> int:
        """Distinct folds validated (a run of one split: 1), seeds not counted."""
        return len({f.fold for f in self.folds})


def read_run(path: Path) -> Run:
    """A finished run folder (one split, K folds in fold*/, seeds in seed*/); DataError if
    anything is missing or damaged."""
    path = Path(path)
    summary_path = path / "summary.json"
    if not summary_path.exists():
        raise DataError(f"{path}: no summary.json (is the run finished?)")
    summary = read_run_json(summary_path)
    config = read_run_json(path / "config.json") if (path / "config.json").exists() else {}
    folds, parts = [], []
    for name, d in member_dirs(path, "summary.json") or [("", path)]:
        pred = d / "predictions.csv"
        if not pred.exists():
            raise DataError(f"{d}: no predictions.csv (is the run finished?)")
        ids, labels, probs, thresholds = read_prediction_table(pred)
        split = read_run_json(d / "split.json") if (d / "split.json").exists() else {}
        try:
            train = [str(i) for i in split.get("train", [])]
        except DAMAGED as exc:
            raise DataError(f"{d / 'split.json'}: damaged run file ({exc})") from None
        threshold = float(thresholds[0]) if thresholds.size else 0.5
        folds.append(Fold(name, ids, labels, probs, train, threshold))
        parts.append(read_run_json(d / "summary.json") if d != path else summary)
    try:
        model = str(summary["model"])
        store = config.get("store", {}).get("path")
    except DAMAGED as exc:
        raise DataError(f"{summary_path}: damaged run file ({type(exc).__name__}: {exc})") from None
    return Run(path, model, summary, folds, store, parts)


# ------------------------------------------------------------------------------ the comparison
def _labels(runs: Sequence[Run]) -> list[str]:
    """Each run's name in the tables: its model, or model@folder when a model repeats."""
    models = [r.model for r in runs]
    return [r.model if models.count(r.model) == 1 else f"{r.model}@{r.path.name}" for r in runs]


def _member_values(run: Run, metric: str) -> dict[str, float]:
    """Each training's best-epoch validation `metric`, by its name."""
    return {f.name: float(p["best"].get(metric, math.nan))
            for f, p in zip(run.folds, run.parts, strict=True)}  # fmt: skip


def _fold_values(run: Run, metric: str) -> list[float]:
    """Each fold's value of `metric`: its mean over seeds with repeated training."""
    by_fold: dict[str, list[float]] = {}
    for name, v in _member_values(run, metric).items():
        by_fold.setdefault(name.split("/")[-1] if "/" in name else name, []).append(v)
    return [float(np.mean(v)) for v in by_fold.values()]


def _model_entry(run: Run, label: str, notes: list[str], seed: int) -> dict[str, Any]:
    s = run.summary
    try:
        values = {k: list(_member_values(run, k).values()) for k in SUMMARY_METRICS}
        entry = {
            "run": str(run.path),
            "model": label,
            "parameters": int(s["parameters"]),
            "device": s.get("device_name") or s["device"],
            "folds": run.n_folds,
            "seeds": int(s.get("seeds") or 1),
            "trainings": len(run.folds),
            "mean": {k: finite(np.mean(v)) for k, v in values.items()},
            "std": {k: finite(_sample_std(v)) for k, v in values.items()},
            "std_ddof": 1,
            "epoch_seconds": finite(np.mean([p["epoch_seconds_mean"] for p in run.parts])),
            "train_patients_per_s": finite(np.mean([p["patients_per_s_mean"] for p in run.parts])),
            "majority_baseline_accuracy": _majority(run),
        }
    except DAMAGED as exc:
        raise DataError(
            f"{run.path / 'summary.json'}: damaged run file ({type(exc).__name__}: {exc})"
        ) from None
    ci: dict[str, list[float] | None] = {}
    clipped: dict[str, list[float] | None] = {}
    for metric in stats.METRIC_NAMES:
        if run.n_folds > 1:
            raw = stats.t_interval(_fold_values(run, metric))
            ci[metric] = as_interval(stats.fold_interval(_fold_values(run, metric)))
            if raw is not None and (raw[0] < 0 or raw[1] > 1):  # said, not hidden
                clipped[metric] = as_interval(raw)
            method = f"Student's t over {run.n_folds} folds (each fold's mean over seeds)"
        else:
            groups = [stats.Group(f.labels, {label: f.probs}, {label: f.threshold})
                      for f in run.folds]  # fmt: skip
            ci[metric] = as_interval(stats.bootstrap_interval(groups, label, metric, seed=seed))
            method = f"patient bootstrap ({stats.N_BOOTSTRAP} stratified draws)"
        if ci[metric] is None:
            notes.append(
                f"{label}: no 95 % interval for {metric} (a fold or split with one "
                "class, or a value that is not finite)"
            )
    entry["ci95"] = ci
    entry["ci95_clipped"] = clipped  # metric -> the unclipped interval, where it left [0, 1]
    entry["ci_method"] = method
    return entry


def _sample_std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _majority(run: Run) -> float | None:
    """Accuracy of always predicting the validation patients' larger class."""
    first = {}  # one seed's folds: every validation patient once
    for f in run.folds:
        first.setdefault(f.fold, f)
    y = np.concatenate([f.labels for f in first.values()]) if first else np.zeros(0)
    return float(max(y.mean(), 1 - y.mean())) if y.size else None


def _groups(a: Run, b: Run, la: str, lb: str) -> tuple[list[stats.Group] | None, str]:
    """The trainings of two runs as paired groups (b aligned to a's patient order), or None
    and why they cannot be paired."""
    fa = {f.name: f for f in a.folds}
    fb = {f.name: f for f in b.folds}
    if set(fa) != set(fb):
        return None, f"{la} and {lb} were not validated on the same folds and seeds"
    groups = []
    for k, x in fa.items():
        y = fb[k]
        if sorted(x.ids) != sorted(y.ids):
            where = k.replace("/", " ").replace("fold", "fold ").replace("seed", "seed ") or "split"
            return None, f"{la} and {lb} validated different patients in {where}"
        order = {pid: i for i, pid in enumerate(y.ids)}
        idx = np.array([order[pid] for pid in x.ids])
        if not np.array_equal(x.labels, y.labels[idx]):
            return None, f"{la} and {lb} give the same patients different labels"
        groups.append(stats.Group(x.labels, {la: x.probs, lb: y.probs[idx]},
                                  {la: x.threshold, lb: y.threshold}))  # fmt: skip
    return groups, ""


def _test_train_ratio(run: Run) -> float:
    """Mean over trainings of validation / training patients (the correction's n2 / n1)."""
    return float(np.mean([len(f.ids) / max(1, len(f.train)) for f in run.folds]))


def _comparison(
    a: str, b: str, groups: list[stats.Group], values: tuple[dict, dict], ratio: float, seed: int
) -> dict[str, Any]:
    """AUC of b minus a: the corrected resampled t-test over the trainings both share; one
    split: the paired patient bootstrap."""
    out: dict[str, Any] = {"a": a, "b": b, "metric": "auc"}
    if len(groups) > 1:
        va, vb = values
        t = stats.corrected_resampled_t([vb[k] - va[k] for k in va], ratio)
        out.update(difference=None if t is None else finite(t.difference),
                   ci95=None if t is None else as_interval(t.ci95),
                   p_value=None if t is None else finite(t.p_value),
                   method=f"corrected resampled t (Nadeau and Bengio), {len(groups)} trainings, "
                          f"n_val/n_train {ratio:.2f}")  # fmt: skip
        return out
    d = stats.paired_difference(groups, a, b, "auc", seed=seed)
    out.update(difference=None if d is None else finite(d.difference),
               ci95=None if d is None else as_interval(d.ci95),
               p_value=None if d is None else finite(d.p_value),
               draws=stats.N_BOOTSTRAP,
               method=f"paired patient bootstrap ({stats.N_BOOTSTRAP} draws; one split: "
                      "conditions on the two trained networks)")  # fmt: skip
    return out


def _not_compared(a: str, b: str) -> dict[str, Any]:
    return {"a": a, "b": b, "metric": "auc", "difference": None, "ci95": None, "p_value": None,
            "method": None}  # fmt: skip


def intensity_baseline(
    run: Run, store: Path | None, notes: list[str]
) -> dict[str, np.ndarray] | None:
    """The intensity baseline's probabilities of each training's validation patients (in the
    run's order), fitted on that training's own training patients; None, with a note, without
    the store."""
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
    train = {f.name: [at[p] for p in f.train if y[at[p]] >= 0] for f in run.folds}
    if any(np.unique(y[t]).size < 2 for t in train.values()):
        notes.append(
            "intensity baseline not computed: a fold's training patients hold one class only"
        )
        return None
    features = store_features(path, rows)
    return {
        f.name: baseline.fit_predict(features, y, train[f.name], [at[p] for p in f.ids])
        for f in run.folds
    }


def _baseline_run(run: Run, probs: dict[str, np.ndarray]) -> Run:
    """The baseline as a run: its validation AUC per training (class 1 at 0.5: unweighted)."""
    folds = [Fold(f.name, f.ids, f.labels, probs[f.name], f.train) for f in run.folds]
    parts = [{"best": {m: stats.POINT[m](f.labels, f.probs) for m in stats.METRIC_NAMES}}
             for f in folds]  # fmt: skip
    return Run(run.path, BASELINE, run.summary, folds, run.store, parts)


def _baseline_entry(base: Run, seed: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"folds": base.n_folds, "trainings": len(base.folds)}
    ci = {}
    for metric in stats.METRIC_NAMES:
        groups = [stats.Group(f.labels, {BASELINE: f.probs}) for f in base.folds]
        entry[metric] = finite(np.mean([g.point(BASELINE, metric) for g in groups]))
        ci[metric] = as_interval(
            stats.fold_interval(_fold_values(base, metric))
            if base.n_folds > 1
            else stats.bootstrap_interval(groups, BASELINE, metric, seed=seed)
        )
    entry["ci95"] = ci
    return entry


def compare(
    run_dirs: Sequence[Path],
    store: Path | None = None,
    *,
    test: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """summary.json's object for `run_dirs` (see the module docstring); `test`: the name of
    each run's subfolder holding its predictions on the untouched test patients."""
    runs = [read_run(Path(r)) for r in run_dirs]
    labels = _labels(runs)
    notes: list[str] = []
    models = [_model_entry(r, lab, notes, seed) for r, lab in zip(runs, labels, strict=True)]
    comparisons = []
    for (ra, la), (rb, lb) in combinations(zip(runs, labels, strict=True), 2):
        comparisons.append(_compared(ra, rb, la, lb, notes, seed))
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
        base = _baseline_run(runs[0], probs)
        baselines[BASELINE] = _baseline_entry(base, seed)
        for run, lab in zip(runs, labels, strict=True):
            c = _compared(base, run, BASELINE, lab, notes, seed)
            versus.append({"model": lab, "baseline": BASELINE,
                           **{k: v for k, v in c.items() if k not in ("a", "b")}})  # fmt: skip
    family = _add_holm([*comparisons, *versus])
    summary = {
        "models": models,
        "comparisons": comparisons,
        "baselines": baselines,
        "versus_baseline": versus,
        "holm_family": family,
        "bootstrap": {"draws": stats.N_BOOTSTRAP, "level": stats.LEVEL, "seed": seed},
        "notes": notes,
    }
    if test is not None:
        from smri.comparison.testset import test_block

        dev = store if store is not None else (Path(runs[0].store) if runs[0].store else None)
        summary["test"] = test_block(run_dirs, labels, test, dev, notes, seed)
    return summary


def _compared(ra: Run, rb: Run, la: str, lb: str, notes: list[str], seed: int) -> dict[str, Any]:
    groups, why = _groups(ra, rb, la, lb)
    if groups is None:
        notes.append(f"{lb} vs {la}: not compared: {why}")
        return _not_compared(la, lb)
    values = (_member_values(ra, "auc"), _member_values(rb, "auc"))
    return _comparison(la, lb, groups, values, _test_train_ratio(rb), seed)


def _add_holm(comparisons: list[dict[str, Any]]) -> list[str]:
    """Holm-adjusted p-values over every comparison that could be made (the family, named)."""
    done = [c for c in comparisons if c["p_value"] is not None]
    for c, p in zip(done, stats.holm([c["p_value"] for c in done]), strict=True):
        c["p_value_holm"] = p
    for c in comparisons:
        c.setdefault("p_value_holm", None)
    return [f"{c.get('b') or c['model']} vs {c.get('a') or c['baseline']}" for c in done]
