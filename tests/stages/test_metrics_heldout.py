"""Test-set uncertainty (smri.metrics.heldout), the corrected resampled t-test and calibration
(smri.metrics.calibration), against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from smri.metrics import calibration, heldout
from smri.metrics.stats import corrected_resampled_t


def _members(labels, quality, rng, names=None):
    """Members whose scores separate the classes by `quality` (one value per member)."""
    y = np.asarray(labels)
    probs = np.stack([1 / (1 + np.exp(-(q * (2 * y - 1) + rng.normal(size=y.size))))
                      for q in quality])  # fmt: skip
    names = tuple(names or (f"fold{k}" for k in range(len(quality))))
    return heldout.Members(names, probs, probs >= 0.5)


@pytest.fixture
def labels():
    return np.array([1] * 40 + [0] * 20)


def test_member_points_match_scikit_learn(labels):
    m = _members(labels, [0.5, 1.5, 3.0], np.random.default_rng(0))
    aucs = heldout.member_points(labels, m, "auc")
    baccs = heldout.member_points(labels, m, "balanced_accuracy")
    for k in range(3):
        assert aucs[k] == pytest.approx(roc_auc_score(labels, m.probs[k]))
        assert baccs[k] == pytest.approx(balanced_accuracy_score(labels, m.decisions[k]))


def test_a_draw_of_every_patient_once_is_the_point_estimate(labels):
    m = _members(labels, [1.0, 2.0], np.random.default_rng(1))
    y = labels == 1
    ones_p, ones_n = np.ones((1, int(y.sum()))), np.ones((1, int((~y).sum())))
    for metric in heldout.METRICS:
        draws = heldout._member_draws(labels, m, metric, ones_p, ones_n)
        assert draws[0] == pytest.approx(heldout.member_points(labels, m, metric))


def test_interval_includes_training_variation(labels):
    """Members that differ widen the interval beyond the patients-only bootstrap; members that
    are the same network leave it as it is."""
    rng = np.random.default_rng(2)
    differ = _members(labels, [0.2, 0.8, 1.5, 2.5, 4.0], rng)
    both = heldout.interval(labels, differ, "auc")
    patients = heldout.interval(labels, differ, "auc", resample_members=False)
    width = lambda e: e.ci95[1] - e.ci95[0]  # noqa: E731
    assert both.point == patients.point
    assert width(both) > 1.3 * width(patients)
    one = _members(labels, [1.5], np.random.default_rng(3))
    same = heldout.Members(
        ("a", "b", "c"), np.repeat(one.probs, 3, 0), np.repeat(one.decisions, 3, 0)
    )
    assert heldout.interval(labels, same, "auc").ci95 == pytest.approx(
        heldout.interval(labels, same, "auc", resample_members=False).ci95
    )


def test_paired_difference_of_a_model_with_itself_is_zero(labels):
    m = _members(labels, [1.0, 2.0, 3.0], np.random.default_rng(4))
    d = heldout.paired_difference(labels, m, m)
    assert d.difference == 0 and d.ci95 == (0.0, 0.0) and d.p_value == 1.0


def test_paired_difference_at_the_floor_reports_its_resolution(labels):
    rng = np.random.default_rng(5)
    weak, strong = _members(labels, [0.1, 0.2, 0.1], rng), _members(labels, [5, 6, 5], rng)
    d = heldout.paired_difference(labels, weak, strong, n=500)
    assert d.difference > 0.3 and d.ci95[0] > 0
    assert d.beyond_zero == 0 and d.draws == 500
    assert d.p_value == pytest.approx(heldout.p_floor(500)) == pytest.approx(2 / 501)


def test_one_class_gives_no_interval():
    y = np.ones(10, dtype=int)
    m = heldout.Members(("a",), np.full((1, 10), 0.7), np.ones((1, 10), bool))
    assert heldout.interval(y, m, "balanced_accuracy").ci95 is None
    assert heldout.paired_difference(y, m, m) is None


def test_ensemble_auc_is_the_auc_of_the_mean_probability(labels):
    m = _members(labels, [0.5, 1.0, 2.0], np.random.default_rng(6))
    assert heldout.ensemble_auc(labels, m) == pytest.approx(
        roc_auc_score(labels, m.probs.mean(axis=0))
    )


def test_corrected_resampled_t_by_hand():
    d = np.array([-0.199, 0.005, 0.025, 0.012, -0.292])  # issue 27: CNN3 - CNN1 per fold
    r = corrected_resampled_t(d, 48 / 192)
    se = math.sqrt((1 / 5 + 0.25) * d.var(ddof=1))
    from scipy.stats import t

    assert r.difference == pytest.approx(d.mean())
    assert (
        r.p_value
        == pytest.approx(2 * t.sf(abs(d.mean()) / se, 4))
        == pytest.approx(0.411, abs=1e-3)
    )
    assert r.ci95[1] - r.ci95[0] == pytest.approx(2 * t.ppf(0.975, 4) * se)
    assert corrected_resampled_t([0.1], 0.25) is None
    same = corrected_resampled_t([0.02, 0.02, 0.02], 0.25)
    assert same.p_value == 0.0 and same.ci95 == (0.02, 0.02)


def test_brier_ece_and_reliability_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.55, 0.65, 0.95, 0.95, 1.0, 0.58])
    assert calibration.brier(y, p) == pytest.approx(np.mean((p - y) ** 2))
    count, mean_p, observed = calibration.reliability(y, p)
    assert count.tolist() == [1, 1, 0, 0, 0, 2, 1, 0, 0, 3]
    assert mean_p[5] == pytest.approx(0.565) and observed[5] == 1.0
    assert np.isnan(mean_p[2])
    assert observed[9] == pytest.approx(2 / 3)
    expected = sum(c * abs(m - o) for c, m, o in zip(count, mean_p, observed, strict=True) if c) / 8
    assert calibration.ece(y, p) == pytest.approx(expected)


def test_undoing_the_class_weight_brings_probabilities_to_the_observed_frequencies():
    """A logistic model trained with BCE's pos_weight = n_neg / n_pos (as smri trains) gives
    probabilities biased towards class 0; the shift by -log(pos_weight) removes the bias:
    closer to the true probabilities, lower Brier and ECE on fresh patients."""
    gen = torch.Generator().manual_seed(0)

    def cohort(n):
        x = torch.randn(n, 1, generator=gen)
        p_true = torch.sigmoid(1.5 * x + 1.2)  # about 75 % class 1, as BraTS
        return x, torch.bernoulli(p_true, generator=gen), p_true

    x, y, _ = cohort(4000)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    model = torch.nn.Linear(1, 1)
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(n_neg / n_pos))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def step():
        opt.zero_grad()
        value = loss(model(x).squeeze(1), y.squeeze(1))
        value.backward()
        return value

    opt.step(step)
    xt, yt, pt = cohort(4000)
    with torch.no_grad():
        logits = model(xt).squeeze(1).double().numpy()
    offset = calibration.logit_offset(n_pos, n_neg, "auto")
    assert offset == pytest.approx(-math.log(n_neg / n_pos))
    raw = 1 / (1 + np.exp(-logits))
    fixed = calibration.undo_class_weight(logits, offset)
    truth, labels = pt.squeeze(1).double().numpy(), yt.squeeze(1).numpy()
    assert np.abs(fixed - truth).mean() < 0.25 * np.abs(raw - truth).mean()
    assert calibration.brier(labels, fixed) < calibration.brier(labels, raw)
    assert calibration.ece(labels, fixed) < 0.5 * calibration.ece(labels, raw)
    # the balanced decision rule is unchanged: raw logit >= 0 <=> calibrated p >= threshold
    t = calibration.balanced_threshold(offset)
    assert t == pytest.approx(n_pos / (n_pos + n_neg))
    assert np.array_equal(logits >= 0, fixed >= t)
    assert calibration.logit_offset(n_pos, n_neg, "none") == 0.0
    assert calibration.balanced_threshold(0.0) == 0.5
