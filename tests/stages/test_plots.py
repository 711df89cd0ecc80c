"""Figures: built from data without pyplot, saved at 150 dpi, with labels, legends and bands."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from smri.comparison import plot_runs
from smri.errors import DataError
from smri.plots import (
    MODEL_COLORS,
    color_for,
    compare_figure,
    fold_loss_figure,
    loss_curve_figure,
    mean_std_by_epoch,
    roc_figure,
    save_figure,
)


def rows(n: int, offset: float = 0.0) -> list[dict[str, float]]:
    return [
        {"epoch": e, "train_loss": 1 / e + offset, "val_loss": 1.2 / e + offset,
         "train_accuracy": 0.5 + e / 20, "val_accuracy": 0.5 + e / 30}
        for e in range(1, n + 1)
    ]  # fmt: skip


def test_mean_std_by_epoch_uses_the_runs_that_reached_each_epoch():
    x, mean, std = mean_std_by_epoch([rows(3), rows(2, offset=1.0)], "train_loss")
    assert x.tolist() == [1, 2, 3]
    np.testing.assert_allclose(mean, [1.5, 1.0, 1 / 3])
    np.testing.assert_allclose(std, [0.5, 0.5, 0.0])


def test_loss_curve_has_title_labels_and_both_curves():
    fig = loss_curve_figure(rows(4), title="CNN2 loss")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("CNN2 loss", "epoch", "BCE loss")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", "validation"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1, 1 / 2, 1 / 3, 1 / 4])


def test_fold_bands_are_drawn_only_with_spread():
    fig = fold_loss_figure([rows(3), rows(3, offset=0.2)], "folds")
    assert len(fig.axes[0].collections) == 2  # one band each for training and validation
    assert "mean ± std, 2 folds" in fig.axes[0].get_legend().get_texts()[0].get_text()
    # each fold's own curves too, thin: 2 means + 2 folds x (training, validation)
    assert len(fig.axes[0].lines) == 6
    np.testing.assert_allclose(
        fig.axes[0].lines[2].get_ydata(), [r["train_loss"] for r in rows(3, 0.2)]
    )
    assert len(loss_curve_figure(rows(3)).axes[0].collections) == 0


def test_model_colours_are_fixed():
    fig = compare_figure({"cnn3": [rows(2)], "cnn1": [rows(2)]}, "val_loss", "t", "loss", None)
    assert [line.get_color() for line in fig.axes[0].lines] == ["tab:green", "tab:blue"]
    assert color_for("cnn2") == MODEL_COLORS["cnn2"] == "tab:orange"
    assert color_for("mine", ["mine"]) == "tab:red"


def test_roc_figure_reports_auc_in_the_legend():
    y = np.array([0, 0, 1, 1])
    fig = roc_figure({"cnn2": [(y, np.array([0.1, 0.4, 0.35, 0.8]))]}, "ROC")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["CNN2 (AUC 0.750)", "chance"]


def test_save_figure_writes_a_150_dpi_png(tmp_path):
    path = save_figure(loss_curve_figure(rows(2)), tmp_path / "sub" / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as im:
        assert round(im.info["dpi"][0]) == 150


def _fake_run(folder, model, folds=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"name": model}}))
    metrics = {  # what the predictions below score: both patients right
        k: 1.0 for k in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
    }
    common = {"model": model, "parameters": 1234, "patients_per_s_mean": 9.87, "device": "cpu",
              "epoch_seconds_mean": 2.5}  # fmt: skip
    summary = (
        {**common, "folds": folds, "mean": metrics, "std": {k: 0.0 for k in metrics}}
        if folds
        else {**common, "fold": None, "best": metrics}
    )
    (folder / "summary.json").write_text(json.dumps(summary))
    parts = [folder / f"fold{k}" for k in range(folds)] if folds else [folder]
    for k, part in enumerate(parts):
        part.mkdir(exist_ok=True)
        if folds:
            (part / "summary.json").write_text(json.dumps({**common, "best": metrics}))
        lines = ["epoch,train_loss,val_loss,train_accuracy,val_accuracy"]
        lines += [f"{e},{1 / e + k},{1 / e},{0.6},{0.5 + k / 10}" for e in (1, 2)]
        (part / "metrics.csv").write_text("\n".join(lines) + "\n")
        (part / "predictions.csv").write_text(
            "patient_id,label,probability,predicted,fold\na,0,0.2,LGG,\nb,1,0.7,HGG,\n"
        )


def test_plot_runs_writes_every_figure(tmp_path):
    _fake_run(tmp_path / "a", "cnn1")
    _fake_run(tmp_path / "b", "cnn3", folds=3)
    written = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "figs")
    assert [p.name for p in written] == [
        "CNN1_loss_curve.png", "CNN3_loss_curve.png", "all_models_loss_curve.png",
        "all_models_accuracy.png", "all_models_roc.png", "summary.json", "summary.md",
    ]  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in written[:-2])
    table = (tmp_path / "figs" / "summary.md").read_text().splitlines()
    assert table[6] == (
        "| CNN1 | 1,234 | 1 × 1 | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] | 1.000 | 1.000 "
        "| 1.000 | 2.5 | 9.9 | cpu |"
    )
    assert table[7].startswith("| CNN3 | 1,234 | 3 × 1 | 1.000 ± 0.000 [1.000, 1.000] | ")
    # Each fake validation split holds one patient of each class: the majority baseline is 0.5.
    assert any(line.startswith("- Majority class: ") and "accuracy 0.500" in line for line in table)
    assert "![all_models_roc.png](all_models_roc.png)" in table
    summary = json.loads((tmp_path / "figs" / "summary.json").read_text())
    rows = summary["models"]
    assert [r["model"] for r in rows] == ["cnn1", "cnn3"]
    assert rows[1]["std"]["auc"] == 0.0 and rows[0]["majority_baseline_accuracy"] == 0.5


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(DataError, match="not an smri run folder"):
        plot_runs([tmp_path], tmp_path / "figs")


def test_summary_names_each_runs_baseline_when_the_splits_differ(tmp_path):
    _fake_run(tmp_path / "a", "cnn1")
    _fake_run(tmp_path / "b", "cnn2")
    (tmp_path / "b" / "predictions.csv").write_text(
        "patient_id,label,probability,predicted,fold\na,0,0.2,LGG,\nb,1,0.7,HGG,\nc,1,0.6,HGG,\n"
    )
    plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "figs")
    table = (tmp_path / "figs" / "summary.md").read_text()
    assert "accuracy CNN1 0.500, CNN2 0.667 (each run's own validation patients)" in table


DAMAGED_RUN_FILES = [
    ("metrics.csv", "epoch,train_loss,val_loss\n1,0.5\n", r"damaged metrics file \(TypeError: "),
    (
        "metrics.csv",
        "epoch,train_loss,val_loss\n",
        r"records no epoch \(has the run trained one\?\)",
    ),
    ("predictions.csv", "patient_id,label,probability\na,x,0.2\n", r"damaged predictions file"),
    ("predictions.csv", "garbage\n", "holds no labelled patient"),
    ("summary.json", '{"model": ', r"damaged run file \(JSONDecodeError: "),
    ("summary.json", '{"model": "cnn1"}', r"damaged run file \(KeyError: 'best'\)"),
    ("config.json", "[]", r"damaged run file \(TypeError: "),
    ("fold1/summary.json", "{", r"damaged run file \(JSONDecodeError: "),
]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    DAMAGED_RUN_FILES,
    ids=["metrics-cut", "metrics-empty", "predictions-bad-label", "predictions-empty",
         "summary-cut", "summary-no-keys", "config-not-a-dict", "fold-summary-cut"],
)  # fmt: skip
def test_plot_names_a_damaged_run_file_and_writes_nothing(tmp_path, name, text, message):
    # these were tracebacks (TypeError, JSONDecodeError, IndexError in the ROC curve), or an
    # empty figure for a metrics.csv without rows
    _fake_run(tmp_path / "a", "cnn1", folds=2 if name.startswith("fold") else None)
    (tmp_path / "a" / name).write_text(text)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'a' / name))}: {message}"):
        plot_runs([tmp_path / "a"], tmp_path / "figs")
    assert not (tmp_path / "figs").exists()
