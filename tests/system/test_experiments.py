"""`make experiments QUICK=1`: every output exists and is non-trivial.

Slow (it trains three models): CI runs it through `.ci/run`, which calls `make experiments
QUICK=1` and then this file with SMRI_EXPERIMENTS_OUT pointing at the results; without that
variable the test runs the make target itself into a temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    "CNN1_loss_curve.png", "CNN2_loss_curve.png", "CNN3_loss_curve.png",
    "all_models_loss_curve.png", "all_models_accuracy.png", "all_models_roc.png",
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    given = os.environ.get("SMRI_EXPERIMENTS_OUT")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("experiments")
    subprocess.run(["make", "-C", str(ROOT), "experiments", "QUICK=1", f"OUT={out}"], check=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", FIGURES)
def test_figures_decode(results, name):
    from PIL import Image

    with Image.open(results / name) as im:
        im.load()
        assert im.size[0] >= 600 and im.size[1] >= 400
        assert round(im.info["dpi"][0]) >= 150
        assert len(set(im.convert("L").tobytes())) > 10  # not a blank canvas


@pytest.mark.slow
def test_summary_has_three_models_intervals_comparisons_and_baselines(results):
    summary = json.loads((results / "summary.json").read_text())
    models = summary["models"]
    assert [m["model"] for m in models] == ["cnn1", "cnn2", "cnn3"]
    for m in models:
        values = [*m["mean"].values(), *m["std"].values(), m["epoch_seconds"],
                  m["train_patients_per_s"], m["majority_baseline_accuracy"]]  # fmt: skip
        assert all(v is not None and math.isfinite(v) for v in values), m
        assert m["parameters"] > 0 and m["folds"] == 2  # QUICK=1 cross-validates on 2 folds
        for metric in ("auc", "balanced_accuracy"):
            lo, hi = m["ci95"][metric]
            assert lo <= m["mean"][metric] <= hi
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [
        ("cnn1", "cnn2"), ("cnn1", "cnn3"), ("cnn2", "cnn3")
    ]  # fmt: skip
    for c in summary["comparisons"]:  # the same folds and patients: every pair is compared
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1] and 0 < c["p_value"] <= 1
    assert 0 < summary["baselines"]["majority"]["accuracy"] < 1
    assert 0 <= summary["baselines"]["intensity_logreg"]["auc"] <= 1
    test = summary["test"]  # issue 27's contract: the untouched test set
    assert test["patients"] == len(test["ids"]) > 0
    assert [m["model"] for m in test["models"]] == ["cnn1", "cnn2", "cnn3"]
    for m in test["models"]:
        assert set(m) >= {"model", "auc", "balanced_accuracy", "ci95", "ensemble_auc", "brier",
                          "ece"}  # fmt: skip
    for c in test["comparisons"]:
        assert set(c) >= {"a", "b", "metric", "difference", "ci95", "p_value", "method"}
    assert "auc" in test["baselines"]["intensity_logreg"]
    assert all(m["std_ddof"] == 1 for m in models)
    dev = set(json.loads((results / "runs" / "cnn1" / "fold0" / "split.json").read_text())["train"])
    assert not dev & set(test["ids"])  # no test patient ever trained
    table = (results / "summary.md").read_text()
    models_table = table.split("## Validation")[1].split("## Pairwise comparisons on validation")[0]
    assert models_table.count("\n| CNN") == 3 and "Majority class" in table
    tested = table.split("## Validation")[0]  # the test set leads
    assert "## Test set (untouched)" in tested and tested.count("\n| CNN") == 3 + 3
    assert "significant at 0.05" in table and "Intensity baseline" in table


@pytest.mark.parametrize(
    ("gpu", "expected", "absent"),
    [
        ("0", ["--epochs 20", "--batch-size 4", "--width 0.5", "--folds 5", "--jobs"], []),
        ("1", ["--folds 5"], ["--epochs", "--batch-size", "--width", "--jobs"]),
    ],
)
def test_make_experiments_passes_only_what_it_changes(tmp_path, gpu, expected, absent):
    """Without a GPU the demo is sized (20 epochs of batch 4, width 0.5, folds in parallel);
    with one, smri train's own defaults; never a dropout, augmentation or lr of its own."""
    plan = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "experiments", f"HAS_GPU={gpu}", f"OUT={tmp_path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    train = next(line for line in plan.splitlines() if "train" in line and "--model" in line)
    for option in expected:
        assert option in train, (option, train)
    for option in [*absent, "--dropout", "--augment", "--no-augment", "--lr"]:
        assert option not in train.split(), (option, train)


@pytest.mark.slow
def test_make_experiments_on_given_data_into_a_folder_that_does_not_exist(tmp_path):
    """README's `make experiments DATA=...` from a fresh clone: OUT (nested, absent) is made."""
    data = tmp_path / "cohort"
    smri = ROOT / ".venv" / "bin" / "smri"
    subprocess.run(
        [str(smri), "synth", str(data), "--patients", "16", "--shape", "24", "24", "40",
         "--layout", "2020", "--quiet"],
        check=True,
    )  # fmt: skip
    out = tmp_path / "not" / "yet" / "here"
    subprocess.run(
        ["make", "-C", str(ROOT), "experiments", "QUICK=1", f"DATA={data}", f"OUT={out}"],
        check=True,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["cnn1", "cnn2", "cnn3"]
    assert not (out / "demo").exists()  # the given data, not a generated cohort
    for name in FIGURES:
        assert (out / name).stat().st_size > 0
