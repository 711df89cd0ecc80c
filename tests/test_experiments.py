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

ROOT = Path(__file__).resolve().parents[1]
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
def test_summary_has_three_models_with_finite_numbers(results):
    rows = json.loads((results / "summary.json").read_text())
    assert [r["model"] for r in rows] == ["cnn1", "cnn2", "cnn3"]
    for r in rows:
        values = [*r["mean"].values(), *r["std"].values(), r["epoch_seconds"],
                  r["train_patients_per_s"], r["majority_baseline_accuracy"]]  # fmt: skip
        assert all(math.isfinite(v) for v in values), r
        assert r["parameters"] > 0
    table = (results / "summary.md").read_text()
    assert table.count("\n| CNN") == 3 and "Majority-class baseline" in table
