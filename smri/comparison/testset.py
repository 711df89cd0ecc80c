"""summary.json's ``test`` block: every model on the untouched test patients.

Each run's test predictions are what `smri evaluate RUN TEST_STORE --out RUN/test` wrote: every
training of the run (fold, seed) scoring the same test patients. Per model: AUC and balanced
accuracy as the mean over its trainings with a 95 % interval that resamples both the test
patients and the trainings (smri.metrics.heldout), the ensemble's AUC (the trainings' mean
probability), Brier score and ECE (calibration, mean over trainings). Every pair of models,
and every model against the intensity baseline, is compared on the same test patients by the
same two-level bootstrap; Holm's correction runs over that whole family.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smri.comparison.common import BASELINE, as_interval, finite, store_features
from smri.errors import DataError
from smri.evaluation.members import RunEvaluation, read_run_predictions
from smri.metrics import baseline, heldout
from smri.metrics.calibration import brier, ece
from smri.metrics.stats import holm
from smri.training.runs import DAMAGED, member_dirs, read_run_json

METHOD = (
    "two-level bootstrap: test patients (stratified by class) and trained models, "
    f"{heldout.N_BOOTSTRAP} draws"
)


def read_test(runs: Sequence[Path], name: str) -> list[RunEvaluation]:
    """Each run's `name`/predictions.csv; DataError naming the first that is missing."""
    found = []
    for run in runs:
        path = Path(run) / name / "predictions.csv"
        if not path.is_file():
            raise DataError(
                f"{path}: no test predictions; score the run first with "
                f"`smri evaluate {run} TEST_STORE --out {Path(run) / name}`"
            )
        found.append(read_run_predictions(path))
    first = found[0]
    for run, ev in zip(runs[1:], found[1:], strict=True):
        if ev.patient_ids != first.patient_ids or not np.array_equal(ev.labels, first.labels):
            raise DataError(
                f"{Path(run) / name}: scored other test patients than {Path(runs[0]) / name}; "
                "every model must be tested on the same patients"
            )
    return found


def test_store(run: Path, name: str) -> Path | None:
    """The store the test predictions came from (recorded by evaluate in metrics.json)."""
    path = Path(run) / name / "metrics.json"
    try:
        return Path(read_run_json(path)["store"]) if path.is_file() else None
    except (*DAMAGED, DataError):
        return None


def _model_entry(label: str, ev: RunEvaluation, seed: int) -> dict[str, Any]:
    m, y = ev.as_members(), ev.labels[ev.labels >= 0]
    entry: dict[str, Any] = {"model": label, "trainings": len(ev.members)}
    ci = {}
    for metric in heldout.METRICS:
        est = heldout.interval(y, m, metric, seed=seed)
        entry[metric] = finite(est.point)
        ci[metric] = as_interval(est.ci95)
    entry["ci95"] = ci
    entry["ensemble_auc"] = finite(heldout.ensemble_auc(y, m))
    entry["brier"] = finite(float(np.mean([brier(y, p) for p in m.probs])))
    entry["ece"] = finite(float(np.mean([ece(y, p) for p in m.probs])))
    return entry


def _comparison(
    y: np.ndarray, a: str, b: str, ma: heldout.Members, mb: heldout.Members, seed: int
) -> dict[str, Any]:
    d = heldout.paired_difference(y, ma, mb, "auc", seed=seed)
    return {
        "a": a,
        "b": b,
        "metric": "auc",
        "difference": None if d is None else finite(d.difference),
        "ci95": None if d is None else as_interval(d.ci95),
        "p_value": None if d is None else finite(d.p_value),
        "draws": None if d is None else d.draws,
        "draws_beyond_zero": None if d is None else d.beyond_zero,
        "method": METHOD,
    }


def baseline_members(
    run: Path, ev: RunEvaluation, dev_store: Path | None, test: Path | None, notes: list[str]
) -> heldout.Members | None:
    """The intensity baseline as trained members: one logistic regression per training of
    `run`, fitted on that training's own training patients (its split.json, from the
    development store) and scoring the test patients (from the test store); None, with a
    note, when a store is missing."""
    from smri.store import StoreReader

    if dev_store is None or test is None or not dev_store.exists() or not test.exists():
        notes.append("test: intensity baseline not computed (a store is not there)")
        return None
    with StoreReader(dev_store) as r:
        dev_index, dev_labels = {p: i for i, p in enumerate(r.patient_ids)}, r.labels.copy()
    with StoreReader(test) as r:
        test_index = {p: i for i, p in enumerate(r.patient_ids)}
    known = ev.labels >= 0
    test_rows = [test_index[p] for p, k in zip(ev.patient_ids, known, strict=True) if k]
    x_test = store_features(test, test_rows)
    probs = []
    for _name, folder in member_dirs(Path(run), "split.json"):
        train_ids = [str(p) for p in read_run_json(folder / "split.json")["train"]]
        missing = [p for p in train_ids if p not in dev_index]
        if missing:
            notes.append(f"test: intensity baseline not computed ({dev_store} lacks {missing[0]})")
            return None
        rows = [dev_index[p] for p in train_ids]
        x_train, y_train = store_features(dev_store, rows), dev_labels[rows]
        features = np.concatenate([x_train, x_test])
        labels = np.concatenate([y_train, np.zeros(len(test_rows), dtype=y_train.dtype)])
        train_at = np.arange(len(rows))
        test_at = np.arange(len(rows), len(rows) + len(test_rows))
        probs.append(baseline.fit_predict(features, labels, train_at, test_at))
    p = np.stack(probs)
    return heldout.Members(tuple(ev.members), p, p >= 0.5)


def test_block(
    runs: Sequence[Path],
    labels: Sequence[str],
    name: str,
    dev_store: Path | None,
    notes: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """summary.json's ``test`` object (see the module docstring)."""
    evs = read_test(runs, name)
    first = evs[0]
    y = first.labels[first.labels >= 0]
    members = {lab: ev.as_members() for lab, ev in zip(labels, evs, strict=True)}
    models = [_model_entry(lab, ev, seed) for lab, ev in zip(labels, evs, strict=True)]
    comparisons = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            comparisons.append(_comparison(y, a, b, members[a], members[b], seed))
    store = test_store(runs[0], name)
    base = baseline_members(runs[0], first, dev_store, store, notes)
    baselines: dict[str, Any] = {BASELINE: None}
    if base is not None:
        est = heldout.interval(y, base, "auc", seed=seed)
        baselines[BASELINE] = {"auc": finite(est.point), "ci95": {"auc": as_interval(est.ci95)}}
        for lab in labels:
            comparisons.append(_comparison(y, BASELINE, lab, base, members[lab], seed))
    done = [c for c in comparisons if c["p_value"] is not None]
    for c, p in zip(done, holm([c["p_value"] for c in done]), strict=True):
        c["p_value_holm"] = p
    for c in comparisons:
        c.setdefault("p_value_holm", None)
    return {
        "patients": int(y.size),
        "ids": [p for p, k in zip(first.patient_ids, first.labels >= 0, strict=True) if k],
        "store": None if store is None else str(store),
        "prevalence": finite(float(y.mean())) if y.size else None,
        "models": models,
        "comparisons": comparisons,
        "baselines": baselines,
        "holm_family": [f"{c['b']} vs {c['a']}" for c in done],
        "method": METHOD,
    }
