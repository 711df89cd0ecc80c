"""Calibrated probabilities through the whole path: training writes the class weight's logit
offset into its checkpoints, predictions.csv holds sigmoid(logit + offset) with the balanced
threshold, and evaluate gives the same numbers, with Brier and ECE."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from smri.metrics import binary_metrics
from smri.model_io import calibration_of, load_checkpoint, model_from_checkpoint
from smri.networks import ModelConfig
from smri.store import StoreReader
from smri.training import TrainConfig, train
from tests.helpers.cli import quiet
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

LABELS = [1, 1, 1, 0] * 6  # 75 % class 1, as BraTS


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cal") / "s.h5", labels=LABELS)


def _run(store, out, class_weight):
    cfg = TrainConfig(epochs=2, batch_size=4, workers=0, cache="ram", lr=3e-3,
                      class_weight=class_weight)  # fmt: skip
    train(store, ModelConfig(width=0.25), cfg, out, log=quiet)
    return out


def _raw_logits(store, run, rows):
    ckpt = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    with StoreReader(store) as reader:
        x = torch.from_numpy(np.stack([reader.read(i) for i in rows]).astype(np.float32))
    with torch.no_grad():
        return model(x).double().numpy(), ckpt


def _predictions(run):
    with open(run / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("class_weight", ["auto", "none"])
def test_predictions_are_the_logits_with_the_class_weight_undone(store, tmp_path, class_weight):
    run = _run(store, tmp_path / class_weight, class_weight)
    split = json.loads((run / "split.json").read_text())
    with StoreReader(store) as reader:
        index = {pid: i for i, pid in enumerate(reader.patient_ids)}
        labels = reader.labels.copy()
    y_train = labels[[index[p] for p in split["train"]]]
    n_pos, n_neg = int((y_train == 1).sum()), int((y_train == 0).sum())
    rows = _predictions(run)
    logits, ckpt = _raw_logits(store, run, [index[r["patient_id"]] for r in rows])
    offset, threshold, method = calibration_of(ckpt)
    if class_weight == "auto":
        assert offset == pytest.approx(-math.log(n_neg / n_pos))
        assert threshold == pytest.approx(n_pos / (n_pos + n_neg))
        assert "class weight" in method
    else:
        assert (offset, threshold) == (0.0, 0.5)
    probs = np.array([float(r["probability"]) for r in rows])
    assert probs == pytest.approx(1 / (1 + np.exp(-(logits + offset))), abs=2e-6)
    assert [float(r["threshold"]) for r in rows] == pytest.approx([threshold] * len(rows), abs=1e-6)
    # the decisions are the balanced rule training aimed at: a raw logit >= 0
    predicted_hgg = np.array([r["predicted"] == "HGG" for r in rows])
    assert np.array_equal(predicted_hgg, logits >= 0)
    y = np.array([int(r["label"]) for r in rows])
    best = json.loads((run / "summary.json").read_text())["best"]
    raw = binary_metrics(y, 1 / (1 + np.exp(-logits)), 0.5)
    for k in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"):
        assert best[k] == pytest.approx(raw[k]), k


def test_evaluate_reports_the_same_calibrated_probabilities_and_their_calibration(store, tmp_path):
    import smri

    run = _run(store, tmp_path / "run", "auto")
    report = smri.evaluate(run / "best.pt", store, out=tmp_path / "eval", saliency_patients=0,
                           workers=0, quiet=True, log=quiet)  # fmt: skip
    ckpt = load_checkpoint(run / "best.pt")
    threshold = calibration_of(ckpt)[1]
    assert report["threshold"] == pytest.approx(threshold)
    assert "class weight" in report["calibration"]
    with open(tmp_path / "eval" / "predictions.csv", newline="") as fh:
        evaluated = {r["patient_id"]: float(r["probability"]) for r in csv.DictReader(fh)}
    for r in _predictions(run):  # the validation patients, probabilities as training wrote them
        assert evaluated[r["patient_id"]] == pytest.approx(float(r["probability"]), abs=2e-6)
    y = np.array(LABELS)
    p = np.array([evaluated[f"P{i:03d}"] for i in range(len(LABELS))])
    assert report["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-5)
    assert 0 <= report["ece"] <= 1


def test_a_checkpoint_without_calibration_reads_as_uncalibrated(store, tmp_path):
    run = _run(store, tmp_path / "run", "auto")
    ckpt = load_checkpoint(run / "best.pt")
    del ckpt["calibration"]
    assert calibration_of(ckpt)[:2] == (0.0, 0.5)
    ckpt["calibration"] = {"method": "x", "logit_offset": "nan", "threshold": 0.7}
    with pytest.raises(Exception, match="bad calibration"):
        calibration_of(ckpt, "best.pt")


def test_explain_reports_the_same_calibrated_probability_and_decision(store, tmp_path):
    import smri

    run = _run(store, tmp_path / "run", "auto")
    rows = {r["patient_id"]: r for r in _predictions(run)}
    report = smri.explain(run / "best.pt", store, list(rows)[:3], out=tmp_path / "ex", steps=4,
                          quiet=True, log=quiet)  # fmt: skip
    for r in report["rows"]:
        assert r["probability"] == pytest.approx(float(rows[r["patient_id"]]["probability"]),
                                                 abs=2e-6)  # fmt: skip
        assert r["predicted"] == rows[r["patient_id"]]["predicted"]
