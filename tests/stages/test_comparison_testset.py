"""The untouched test set end to end: a holdout list kept out of training and validation,
every training of a run scored on the test patients, patients a training saw refused, the
baseline fitted on training patients only, and summary.json's ``test`` block."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import smri.comparison.testset
from smri.comparison.compare import compare
from smri.comparison.report import summary_markdown
from smri.data.holdout import holdout_rows, read_holdout, write_holdout
from smri.errors import DataError
from smri.evaluation.members import evaluate_run, metrics_of, write_run_predictions
from smri.jsonfiles import write_json
from smri.metrics import baseline
from smri.networks import ModelConfig
from smri.store import StoreReader
from smri.training import TrainConfig, train
from tests.helpers.cli import quiet
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

FAST = TrainConfig(epochs=1, batch_size=4, workers=0, cache="ram", lr=3e-3, folds=2)
SMALL = ModelConfig(width=0.25)


def _renamed_store(path: Path, labels: list[int], prefix: str, seed: int) -> Path:
    """make_store's learnable store, its patients renamed `prefix`000, ... (another cohort)."""
    import h5py

    make_store(path, labels=labels, seed=seed)
    with h5py.File(path, "r+") as f:
        f["patient_id"][:] = [f"{prefix}{i:03d}".encode() for i in range(len(labels))]
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("testset")
    dev = make_store(root / "dev.h5", labels=[0, 1] * 10)
    test = _renamed_store(root / "test.h5", [0, 1, 1, 1] * 3, "T", seed=7)
    runs = []
    for name in ("cnn1", "cnn2"):
        run = root / "runs" / name
        train(dev, replace(SMALL, name=name), FAST, run, log=quiet)
        ev = evaluate_run(run, test, workers=0, cache="ram")
        (run / "test").mkdir()
        write_run_predictions(run / "test" / "predictions.csv", ev)
        write_json(run / "test" / "metrics.json", {"store": str(test), **metrics_of(ev)})
        runs.append(run)
    return dev, test, runs


def test_every_training_scores_the_test_patients(cohort):
    _dev, test, runs = cohort
    ev = evaluate_run(runs[0], test, workers=0, cache="ram")
    assert ev.members == ["fold0", "fold1"]
    assert ev.patient_ids == [f"T{i:03d}" for i in range(12)]
    assert ev.probabilities.shape == (2, 12) and np.all(
        (ev.probabilities >= 0) & (ev.probabilities <= 1)
    )
    m = metrics_of(ev)
    assert [x["member"] for x in m["members"]] == ["fold0", "fold1"]
    assert m["mean"]["auc"] == pytest.approx(np.mean([x["auc"] for x in m["members"]]))
    assert 0 <= m["ensemble_auc"] <= 1


def test_patients_a_training_saw_are_refused_as_test_patients(cohort):
    dev, _test, runs = cohort
    with pytest.raises(DataError, match=r"trained or validated on 20 patients of the test set"):
        evaluate_run(runs[0], dev, workers=0, cache="ram")
    with pytest.raises(DataError, match=r"fold0 trained or validated on 1 patient .*\(P003"):
        evaluate_run(runs[0], dev, patients=["P003"], workers=0, cache="ram")


def test_summary_test_block_contract(cohort):
    dev, _test, runs = cohort
    s = compare(runs, dev, test="test")
    json.dumps(s, allow_nan=False)  # no NaN anywhere
    t = s["test"]
    assert t["patients"] == 12 and t["ids"] == [f"T{i:03d}" for i in range(12)]
    assert [m["model"] for m in t["models"]] == ["cnn1", "cnn2"]
    for m in t["models"]:
        assert m["trainings"] == 2
        for metric in ("auc", "balanced_accuracy"):
            lo, hi = m["ci95"][metric]
            assert 0 <= lo <= hi <= 1
        assert set(m) >= {"model", "auc", "balanced_accuracy", "ci95", "ensemble_auc", "brier",
                          "ece"}  # fmt: skip
    pairs = [(c["a"], c["b"]) for c in t["comparisons"]]
    assert pairs == [("cnn1", "cnn2"), ("intensity_logreg", "cnn1"), ("intensity_logreg", "cnn2")]
    for c in t["comparisons"]:
        assert set(c) >= {"a", "b", "metric", "difference", "ci95", "p_value", "method"}
        assert 2 / 2001 <= c["p_value"] <= 1 and c["p_value_holm"] >= c["p_value"]
    assert len(t["holm_family"]) == 3
    assert 0 <= t["baselines"]["intensity_logreg"]["auc"] <= 1
    text = summary_markdown(s)
    assert text.index("## Test set (untouched)") < text.index("## Validation (used for selection)")


def test_the_baseline_is_fitted_on_training_patients_and_scores_test_patients(cohort, monkeypatch):
    dev, test, runs = cohort
    calls = []
    real = baseline.fit_predict

    def spy(features, y, train, test_rows):
        calls.append((len(train), len(test_rows)))
        return real(features, y, train, test_rows)

    monkeypatch.setattr(baseline, "fit_predict", spy)
    seen = []
    real_features = smri.comparison.compare.store_features

    def features(path, rows):
        seen.append((Path(path), list(rows)))
        return real_features(path, rows)

    for module in (smri.comparison.compare, smri.comparison.testset):  # wherever it is called
        monkeypatch.setattr(module, "store_features", features)
    compare(runs, dev, test="test")
    test_calls = [(p, rows) for p, rows in seen if p == test]
    assert test_calls and all(sorted(rows) == list(range(12)) for _, rows in test_calls)
    for folder in ("fold0", "fold1"):
        split = json.loads((runs[0] / folder / "split.json").read_text())
        with StoreReader(dev) as r:
            index = {p: i for i, p in enumerate(r.patient_ids)}
        assert (dev, [index[p] for p in split["train"]]) in seen  # its own training patients
    assert (10, 12) in calls  # 10 training patients per fold, the 12 test patients


def test_a_holdout_list_never_reaches_training_or_validation(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 10)
    with StoreReader(store) as r:
        ids, labels, classes = r.patient_ids, r.labels.copy(), r.info.classes
    rows = holdout_rows(labels, classes, 0.2, seed=0)
    assert len(rows) == 4 and sorted(labels[rows].tolist()) == [0, 0, 1, 1]  # stratified
    listed = tmp_path / "holdout.csv"
    write_holdout(listed, [ids[i] for i in rows], labels[rows])
    held = read_holdout(listed)
    assert held == sorted(ids[i] for i in rows)
    run = tmp_path / "run"
    train(store, SMALL, replace(FAST, holdout=str(listed)), run, log=quiet)
    for fold in ("fold0", "fold1"):
        split = json.loads((run / fold / "split.json").read_text())
        assert not set(held) & {*split["train"], *split["val"]}
        assert split["held_out"] == held
        assert len(split["train"]) + len(split["val"]) == 16
    ev = evaluate_run(run, store, patients=held, workers=0, cache="ram")  # untouched: scored
    assert ev.patient_ids == held
    with pytest.raises(DataError, match="not untouched test patients"):
        evaluate_run(run, store, patients=[*held, split["train"][0]], workers=0, cache="ram")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id\nP001\n", "needs a patient_id column; found id"),
        ("patient_id,label\n", "names no patient"),
        ("patient_id\n\n \n", "names no patient"),
    ],
)
def test_a_bad_holdout_list_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "h.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as exc:
        read_holdout(path)
    assert str(path) in str(exc.value)


def test_plot_with_a_test_set_leads_with_it_and_draws_its_roc_and_calibration(cohort, tmp_path):
    from smri.comparison import plot_runs

    dev, _test, runs = cohort
    written = plot_runs(runs, tmp_path / "figs", dev, test="test")
    names = [p.name for p in written]
    assert names[:2] == ["test_roc.png", "test_reliability.png"]
    assert all((tmp_path / "figs" / n).stat().st_size > 1000 for n in names[:2])
    text = (tmp_path / "figs" / "summary.md").read_text()
    assert "![test_reliability.png](test_reliability.png)" in text
    assert text.index("## Test set (untouched)") < text.index("## Validation")
    assert "| intensity baseline | CNN1 |" in text  # not the JSON key
    with pytest.raises(DataError, match=r"no test predictions; score the run first"):
        plot_runs(runs, tmp_path / "other", dev, test="elsewhere")
