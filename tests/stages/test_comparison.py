"""Intervals, paired comparisons and baselines of finished runs (smri.metrics.stats,
smri.comparison)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

import smri.comparison.compare
from smri.comparison.compare import compare
from smri.comparison.report import summary_markdown
from smri.metrics import baseline, binary_metrics, stats
from tests.helpers.stores import make_store


# ----------------------------------------------------------------------------------- stats
def _group(rng: np.random.Generator, n: int = 40, shift: dict[str, float] | None = None):
    y = (rng.random(n) < 0.7).astype(int)
    y[:2] = [0, 1]
    shift = shift or {"a": 0.3, "b": 0.6}
    return stats.Group(y, {m: np.clip(rng.random(n) * 0.7 + s * y * 0.5, 0, 1)
                           for m, s in shift.items()})  # fmt: skip


def test_a_draw_of_all_ones_is_scikit_learns_metric():
    rng = np.random.default_rng(0)
    g = _group(rng)
    g.probs["a"][:10] = 0.5  # ties, and some exactly at the threshold
    y = g.labels == 1
    ones = (np.ones((1, int(y.sum()))), np.ones((1, int((~y).sum()))))
    auc = stats._draw_values(g, "a", "auc", *ones)[0]
    bacc = stats._draw_values(g, "a", "balanced_accuracy", *ones)[0]
    assert auc == pytest.approx(roc_auc_score(g.labels, g.probs["a"]))
    assert bacc == pytest.approx(balanced_accuracy_score(g.labels, g.probs["a"] >= 0.5))


def test_a_draw_of_counts_is_the_metric_of_the_resampled_patients():
    """Counts stand for resampled indices: the weighted AUC is sklearn's on the repeated rows."""
    rng = np.random.default_rng(1)
    g = _group(rng)
    y = g.labels == 1
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    take = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
    cp = np.bincount(np.searchsorted(pos, take[: pos.size]), minlength=pos.size)[None]
    cn = np.bincount(np.searchsorted(neg, take[pos.size :]), minlength=neg.size)[None]
    expected = roc_auc_score(g.labels[take], g.probs["b"][take])
    assert stats._draw_values(g, "b", "auc", cp, cn)[0] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", stats.METRIC_NAMES)
def test_bootstrap_interval_contains_the_point_estimate(seed, metric):
    groups = [_group(np.random.default_rng([seed, k]), n=30 + 7 * k) for k in range(seed % 3 + 1)]
    point = stats.mean_point(groups, "a", metric)
    lo, hi = stats.bootstrap_interval(groups, "a", metric, seed=seed)
    assert lo <= point <= hi and lo < hi


@pytest.mark.parametrize("values", [[0.7, 0.8, 0.9, 0.75, 0.85], [0.99, 1.0, 1.0], [0.5, 0.5]])
def test_fold_interval_is_students_t_and_contains_the_mean(values):
    from scipy.stats import t

    lo, hi = stats.fold_interval(values)
    v = np.array(values)
    half = t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    assert lo == pytest.approx(max(0, v.mean() - half)) and hi == pytest.approx(
        min(1, v.mean() + half)
    )
    assert lo <= v.mean() <= hi and lo >= 0 and hi <= 1


def test_fold_interval_needs_two_finite_values():
    assert stats.fold_interval([0.8]) is None
    assert stats.fold_interval([0.8, math.nan, 0.9]) is None


def test_paired_difference_of_a_model_with_itself_is_zero_and_not_significant():
    g = _group(np.random.default_rng(3))
    g.probs["c"] = g.probs["a"].copy()
    d = stats.paired_difference([g], "a", "c")
    assert d.difference == 0 and d.ci95 == (0.0, 0.0) and d.p_value == 1.0


def test_a_clearly_better_model_is_significant_and_its_interval_holds_the_difference():
    groups = [_group(np.random.default_rng([9, k]), n=60, shift={"a": 0.0, "b": 0.9})
              for k in range(3)]  # fmt: skip
    d = stats.paired_difference(groups, "a", "b")
    expected = np.mean([roc_auc_score(g.labels, g.probs["b"])
                        - roc_auc_score(g.labels, g.probs["a"]) for g in groups])  # fmt: skip
    assert d.difference == pytest.approx(expected)
    assert d.ci95[0] <= d.difference <= d.ci95[1]
    assert d.ci95[0] > 0 and d.p_value < 0.01


def test_one_class_gives_no_interval():
    g = stats.Group(np.ones(5, int), {"a": np.linspace(0, 1, 5), "b": np.linspace(0, 1, 5)})
    assert stats.bootstrap_interval([g], "a", "auc") is None
    assert stats.paired_difference([g], "a", "b") is None


def test_holm_adjusts_in_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# -------------------------------------------------------------------------------- baseline
def test_intensity_features_shape_and_values():
    slab = np.zeros((4, 2, 3, 5), dtype=np.float32)
    slab[1, 0, 0, 0] = 1.0
    f = baseline.intensity_features(slab).reshape(4, -1)
    assert f.shape == (4, baseline.FEATURES_PER_MODALITY)
    assert f[1, 0] == pytest.approx(1 / 30)  # mean
    assert f[1, 2] == 1.0  # max
    assert not f[[0, 2, 3]].any()


def test_fit_predict_uses_only_the_training_rows(monkeypatch):
    from sklearn.pipeline import Pipeline

    seen = []
    fit = Pipeline.fit
    monkeypatch.setattr(
        Pipeline, "fit", lambda self, x, y: seen.append(x.copy()) or fit(self, x, y)
    )
    rng = np.random.default_rng(0)
    features = rng.random((20, 3))
    labels = np.array([0, 1] * 10)
    probs = baseline.fit_predict(features, labels, np.arange(14), np.arange(14, 20))
    assert probs.shape == (6,) and np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_array_equal(seen[0], features[:14])


# ------------------------------------------------------------------------- runs -> summary
def _write_run(folder: Path, model: str, folds: list[dict], store: Path | None = None) -> Path:
    """A finished run folder whose summaries agree with its predictions. Each fold: ids,
    labels, probs, train (ids)."""
    folder.mkdir(parents=True)
    common = {"model": model, "parameters": 1000, "device": "cpu", "epoch_seconds_mean": 1.0,
              "patients_per_s_mean": 10.0}  # fmt: skip
    config = {"model": {"name": model}, "store": {"path": str(store) if store else None}}
    (folder / "config.json").write_text(json.dumps(config))
    parts = [folder] if len(folds) == 1 else [folder / f"fold{k}" for k in range(len(folds))]
    bests = []
    for k, (part, f) in enumerate(zip(parts, folds, strict=True)):
        part.mkdir(exist_ok=True)
        best = binary_metrics(np.array(f["labels"]), np.array(f["probs"]))
        bests.append(best)
        fold = "" if len(folds) == 1 else k
        lines = ["patient_id,label,probability,predicted,fold"]
        lines += [f"{i},{y},{p:.6f},x,{fold}" for i, y, p in zip(f["ids"], f["labels"], f["probs"],
                                                                  strict=True)]  # fmt: skip
        (part / "predictions.csv").write_text("\n".join(lines) + "\n")
        split = {"train": f["train"], "val": f["ids"], "fold": None if len(folds) == 1 else k}
        (part / "split.json").write_text(json.dumps(split))
        (part / "summary.json").write_text(json.dumps({**common, "fold": split["fold"],
                                                        "best": best}))  # fmt: skip
    if len(folds) > 1:
        keys = bests[0].keys()
        summary = {**common, "folds": len(folds), "per_fold": bests,
                   "mean": {k: float(np.mean([b[k] for b in bests])) for k in keys},
                   "std": {k: float(np.std([b[k] for b in bests])) for k in keys}}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _folds(ids: list[str], labels: list[int], k: int, probs: np.ndarray) -> list[dict]:
    out = []
    for f in range(k):  # k folds; k = 1: one split, every third patient validates
        val = list(range(f, len(ids), k)) if k > 1 else list(range(0, len(ids), 3))
        train = [i for i in range(len(ids)) if i not in val]
        out.append(
            {
                "ids": [ids[i] for i in val],
                "labels": [labels[i] for i in val],
                "probs": [float(probs[i]) for i in val],
                "train": [ids[i] for i in train],
            }
        )
    return out  # fmt: skip


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, list[str], list[int]]:
    labels = [0, 0, 1, 1] * 6  # every fold of 1 to 3 (every k-th patient) holds both classes
    store = make_store(tmp_path / "s.h5", labels=labels)
    return store, [f"P{i:03d}" for i in range(len(labels))], labels


def _three_runs(tmp_path, cohort, k: int) -> list[Path]:
    store, ids, labels = cohort
    rng = np.random.default_rng(4)
    y = np.array(labels)
    runs = []
    for model, strength in (("cnn1", 0.0), ("cnn2", 0.5), ("cnn3", 0.9)):
        probs = np.clip(
            rng.random(len(ids)) * 0.6 + strength * 0.4 * y + (1 - strength) * 0.2, 0, 1
        )
        runs.append(_write_run(tmp_path / model, model, _folds(ids, labels, k, probs), store))
    return runs


@pytest.mark.parametrize("k", [1, 3])
def test_summary_contract(tmp_path, cohort, k):
    runs = _three_runs(tmp_path, cohort, k)
    s = compare(runs)
    json.dumps(s, allow_nan=False)  # no NaN anywhere
    assert [m["model"] for m in s["models"]] == ["cnn1", "cnn2", "cnn3"]
    for m in s["models"]:
        assert m["folds"] == k and set(m) >= {"model", "folds", "mean", "std", "ci95"}
        for metric in ("auc", "balanced_accuracy"):
            lo, hi = m["ci95"][metric]
            assert lo <= m["mean"][metric] <= hi, (m["model"], metric)
    pairs = [(c["a"], c["b"]) for c in s["comparisons"]]
    assert pairs == [("cnn1", "cnn2"), ("cnn1", "cnn3"), ("cnn2", "cnn3")]
    for c in s["comparisons"]:
        assert c["metric"] == "auc" and 0 <= c["p_value"] <= 1
        assert c["difference"] == pytest.approx(
            next(m for m in s["models"] if m["model"] == c["b"])["mean"]["auc"]
            - next(m for m in s["models"] if m["model"] == c["a"])["mean"]["auc"],
            abs=1e-5,
        )
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1]
    assert s["baselines"]["majority"]["accuracy"] == pytest.approx(0.5)
    lr = s["baselines"]["intensity_logreg"]
    assert 0 <= lr["auc"] <= 1 and 0 <= lr["balanced_accuracy"] <= 1
    assert [v["model"] for v in s["versus_baseline"]] == ["cnn1", "cnn2", "cnn3"]
    text = summary_markdown(s)
    models_table, pairs_table = text.split("## Pairwise comparisons on validation")
    assert models_table.count("\n| CNN") == 3 and pairs_table.count("\n| CNN") == 3
    assert "significant at 0.05" in text and "Intensity baseline" in text


def test_pairs_validated_on_different_patients_are_not_compared(tmp_path, cohort):
    store, ids, labels = cohort
    probs = np.linspace(0, 1, len(ids))
    a = _write_run(tmp_path / "a", "cnn1", _folds(ids, labels, 2, probs), store)
    other = _folds(ids, labels, 2, probs)
    other[0]["ids"][0], other[1]["ids"][0] = other[1]["ids"][0], other[0]["ids"][0]
    b = _write_run(tmp_path / "b", "cnn2", other, store)
    s = compare([a, b])
    assert s["comparisons"][0]["difference"] is None and s["comparisons"][0]["p_value"] is None
    assert any("validated different patients in fold 0" in n for n in s["notes"])
    assert "not compared" in summary_markdown(s)


def test_pairs_are_matched_by_patient_not_by_row_order(tmp_path, cohort):
    store, ids, labels = cohort
    probs = np.random.default_rng(0).random(len(ids))
    folds = _folds(ids, labels, 2, probs)
    shuffled = [{**f, "ids": f["ids"][::-1], "labels": f["labels"][::-1], "probs": f["probs"][::-1]}
                for f in folds]  # fmt: skip
    s = compare([_write_run(tmp_path / "a", "cnn1", folds, store),
                 _write_run(tmp_path / "b", "cnn2", shuffled, store)])  # fmt: skip
    c = s["comparisons"][0]
    assert c["difference"] == pytest.approx(0, abs=1e-9) and c["p_value"] == 1.0


def test_the_baseline_never_sees_a_validation_patient(tmp_path, cohort, monkeypatch):
    _store, ids, _labels = cohort
    calls = []
    real = baseline.fit_predict

    def spy(features, y, train, test):
        calls.append((set(map(int, train)), set(map(int, test))))
        return real(features, y, train, test)

    monkeypatch.setattr(baseline, "fit_predict", spy)  # smri.metrics.baseline: where it lives
    monkeypatch.setattr(
        smri.comparison.compare,
        "store_features",
        lambda path, rows: np.array(rows, dtype=float)[:, None] + np.zeros((1, 3)),
    )
    runs = _three_runs(tmp_path, cohort, 3)
    compare(runs)
    assert len(calls) == 3
    # the feature of a row is its store row: the spy's indices map back to patients
    for train, test in calls:
        assert train and test and not train & test
    wanted = sorted(ids)
    folds = json.loads((runs[0] / "fold0" / "split.json").read_text())
    train0 = {wanted.index(p) for p in folds["train"]}
    assert calls[0] == (train0, {wanted.index(p) for p in folds["val"]})


def test_a_cnn_that_does_not_beat_the_baseline_is_called_out(tmp_path, cohort):
    store, ids, labels = cohort
    chance = np.full(len(ids), 0.5)
    s = compare([_write_run(tmp_path / "a", "cnn1", _folds(ids, labels, 2, chance), store)])
    assert s["comparisons"] == []
    assert "CNN1 does not beat the intensity baseline" in summary_markdown(s)


def test_without_the_store_the_baseline_is_null_with_a_reason(tmp_path, cohort):
    store, ids, labels = cohort
    run = _write_run(tmp_path / "a", "cnn1", _folds(ids, labels, 2, np.linspace(0, 1, 24)),
                     tmp_path / "gone.h5")  # fmt: skip
    s = compare([run])
    assert s["baselines"]["intensity_logreg"] is None and s["versus_baseline"] == []
    assert any("gone.h5 is not there (give it with --store)" in n for n in s["notes"])
    assert compare([run], store)["baselines"]["intensity_logreg"] is not None


def test_plain_words_say_p_below_a_thousandth_as_an_inequality():
    from smri.comparison.report import _p_text

    assert _p_text(0.0004) == "p < 0.001"
    assert _p_text(0.042) == "p = 0.042"
    assert _p_text(None) == "p = n/a"


def test_summary_sentences_never_say_p_equals_less_than(tmp_path, cohort):
    """A pair and a baseline comparison with p below a thousandth, through the whole report."""
    store, ids, labels = cohort
    chance = np.full(len(ids), 0.5)
    perfect = np.asarray(labels, dtype=float)
    s = compare([
        _write_run(tmp_path / "a", "cnn1", _folds(ids, labels, 2, chance), store),
        _write_run(tmp_path / "b", "cnn2", _folds(ids, labels, 2, perfect), store),
    ])  # fmt: skip
    text = summary_markdown(s)
    assert s["comparisons"][0]["p_value"] < 0.001
    assert "p < 0.001" in text and "p = <" not in text
