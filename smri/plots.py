"""Figures as functions of data: loss curves, model comparisons and ROC curves (150 dpi PNG).

Each function takes arrays or metric rows and returns a matplotlib Figure built without pyplot
(no global state, no display); `save_figure` writes it. `plot_runs` reads run folders.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smri.errors import DataError
from smri.metrics import roc_auc, roc_curve

DPI = 150
MODEL_COLORS = {"cnn1": "tab:blue", "cnn2": "tab:orange", "cnn3": "tab:green"}
EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
Rows = list[dict[str, float]]


def color_for(model: str, order: Sequence[str] = ()) -> str:
    """The model's fixed colour (cnn1 blue, cnn2 orange, cnn3 green; others after them)."""
    if model in MODEL_COLORS:
        return MODEL_COLORS[model]
    others = [m for m in order if m not in MODEL_COLORS]
    k = others.index(model) if model in others else len(others)
    return EXTRA_COLORS[k % len(EXTRA_COLORS)]


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write `fig` as PNG at `dpi`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def mean_std_by_epoch(runs: Sequence[Rows], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std (ddof=0) of `key` over the runs that reached each epoch."""
    epochs = sorted({int(r["epoch"]) for rows in runs for r in rows})
    values = [[r[key] for rows in runs for r in rows if int(r["epoch"]) == e] for e in epochs]
    mean = np.array([np.mean(v) for v in values])
    std = np.array([np.std(v) for v in values])
    return np.array(epochs), mean, std


def _band(ax, x, mean, std, color: str, label: str, linestyle: str = "-") -> None:
    ax.plot(x, mean, color=color, linestyle=linestyle, label=label)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def fold_loss_figure(runs: Sequence[Rows], title: str, color: str = "tab:blue") -> Figure:
    """Training (solid) and validation (dashed) loss per epoch; mean ± std band over runs."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    n = len(runs)
    suffix = f" (mean ± std, {n} folds)" if n > 1 else ""
    for key, style, name in (("train_loss", "-", "training"), ("val_loss", "--", "validation")):
        x, mean, std = mean_std_by_epoch(runs, key)
        _band(ax, x, mean, std, color, f"{name}{suffix}", style)
    ax.set(title=title, xlabel="epoch", ylabel="BCE loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def loss_curve_figure(rows: Rows, title: str = "loss") -> Figure:
    """Training and validation loss of one run."""
    return fold_loss_figure([rows], title)


def compare_figure(
    runs: dict[str, Sequence[Rows]], key: str, title: str, ylabel: str, train_key: str | None
) -> Figure:
    """One curve per model (mean ± std over folds) of `key`, and dashed `train_key` if given."""
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.subplots()
    for model, model_runs in runs.items():
        c = color_for(model, list(runs))
        keys = [(key, "-", "validation")] + ([(train_key, ":", "training")] if train_key else [])
        for k, style, name in keys:
            x, mean, std = mean_std_by_epoch(model_runs, k)
            n = len(model_runs)
            _band(
                ax,
                x,
                mean,
                std,
                c,
                f"{model.upper()} {name}" + (f" (n={n})" if n > 1 else ""),
                style,
            )
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def roc_figure(curves: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]], title: str) -> Figure:
    """ROC per model from (labels, probabilities) per fold: mean TPR ± std on a common FPR grid."""
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.subplots()
    grid = np.linspace(0, 1, 201)
    for model, folds in curves.items():
        tprs, aucs = [], []
        for labels, probs in folds:
            fpr, tpr = roc_curve(labels, probs)
            tprs.append(np.interp(grid, fpr, tpr))
            aucs.append(roc_auc(labels, probs))
        tprs_a = np.array(tprs)
        tprs_a[:, 0] = 0.0
        mean, std = tprs_a.mean(axis=0), tprs_a.std(axis=0)
        auc = f"AUC {np.mean(aucs):.3f}" + (f" ± {np.std(aucs):.3f}" if len(aucs) > 1 else "")
        _band(ax, grid, mean, std, color_for(model, list(curves)), f"{model.upper()} ({auc})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(
        title=title,
        xlabel="false positive rate (1 − specificity)",
        ylabel="true positive rate (sensitivity)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


# ---------------------------------------------------------------------------------- run folders
@dataclass
class RunData:
    """Metric rows and validation predictions of one run folder (one entry per fold)."""

    model: str
    metrics: list[Rows] = field(default_factory=list)
    predictions: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


# what a damaged run file raises while it is parsed: named as the file's problem, one line
DAMAGED = (ValueError, TypeError, KeyError, IndexError, AttributeError, csv.Error)


def read_metrics_csv(path: Path, upto: int | None = None) -> Rows:
    """metrics.csv as a list of float rows (epochs up to `upto`); DataError if it is damaged."""
    try:
        with open(path, newline="") as fh:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        return [r for r in rows if upto is None or r["epoch"] <= upto]
    except DAMAGED as exc:
        raise DataError(f"{path}: damaged metrics file ({type(exc).__name__}: {exc})") from None


def read_predictions_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from predictions.csv (unlabelled rows dropped)."""
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["label"]) >= 0]
        return np.array([int(r["label"]) for r in rows]), np.array(
            [float(r["probability"]) for r in rows]
        )
    except DAMAGED as exc:
        raise DataError(f"{path}: damaged predictions file ({type(exc).__name__}: {exc})") from None


def read_run_json(path: Path) -> Any:
    """A run folder's JSON file (config.json, summary.json); DataError if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: damaged run file ({type(exc).__name__}: {exc})") from None


def load_run(run: Path) -> RunData:
    """A run folder, or a K-fold folder whose fold*/ subfolders are runs."""
    run = Path(run)
    config = run / "config.json"
    if not config.exists():
        raise DataError(f"{run}: not an smri run folder (no config.json)")
    try:
        data = RunData(str(read_run_json(config)["model"]["name"]))
    except DAMAGED as exc:
        raise DataError(f"{config}: damaged run file ({type(exc).__name__}: {exc})") from None
    folds = sorted(run.glob("fold*/metrics.csv"), key=lambda p: int(p.parent.name[4:]))
    parts = [p.parent for p in folds] or [run]
    for part in parts:
        if not (part / "metrics.csv").exists():
            raise DataError(f"{part}: no metrics.csv (has the run trained an epoch?)")
        rows = read_metrics_csv(part / "metrics.csv")
        if not rows:
            raise DataError(f"{part / 'metrics.csv'}: records no epoch (has the run trained one?)")
        data.metrics.append(rows)
        if (part / "predictions.csv").exists():
            labels, probs = read_predictions_csv(part / "predictions.csv")
            if labels.size == 0:
                raise DataError(f"{part / 'predictions.csv'}: holds no labelled patient")
            data.predictions.append((labels, probs))
    return data


def plot_runs(runs: Sequence[Path], out: Path) -> list[Path]:
    """CNNx_loss_curve.png per model and the all_models_* comparisons; returns the files."""
    by_model: dict[str, RunData] = {}
    for run in runs:
        data = load_run(run)
        merged = by_model.setdefault(data.model, RunData(data.model))
        merged.metrics += data.metrics
        merged.predictions += data.predictions
    by_model = dict(sorted(by_model.items()))
    table = summarize_runs(runs)  # every run file is read before a figure is written
    written = []
    for model, data in by_model.items():
        fig = fold_loss_figure(data.metrics, f"{model.upper()}-LSTM loss", color_for(model))
        written.append(save_figure(fig, out / f"{model.upper()}_loss_curve.png"))
    metrics = {m: d.metrics for m, d in by_model.items()}
    loss = compare_figure(metrics, "val_loss", "Loss, all models", "BCE loss", "train_loss")
    written.append(save_figure(loss, out / "all_models_loss_curve.png"))
    acc = compare_figure(
        metrics, "val_accuracy", "Accuracy, all models", "accuracy", "train_accuracy"
    )
    written.append(save_figure(acc, out / "all_models_accuracy.png"))
    preds = {m: d.predictions for m, d in by_model.items() if d.predictions}
    if preds:
        fig = roc_figure(preds, "ROC on validation patients (best epoch)")
        written.append(save_figure(fig, out / "all_models_roc.png"))
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    summary = out / "summary.md"
    summary.write_text(summary_markdown(table, [p.name for p in written]))
    written += [out / "summary.json", summary]
    return written


SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")


def _majority_share(run: Path) -> float | None:
    """Accuracy of always predicting the validation split's majority class."""
    labels = []
    for part in sorted(Path(run).glob("fold*/predictions.csv")) or [Path(run) / "predictions.csv"]:
        if part.exists():
            labels.append(read_predictions_csv(part)[0])
    if not labels:
        return None
    y = np.concatenate(labels)
    return float(max(y.mean(), 1 - y.mean())) if y.size else None


def summarize_runs(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run: model, size, device, best-epoch validation metrics (mean and std over
    folds; std 0 for a single split), epoch time, training throughput, majority baseline."""
    rows = []
    for run in runs:
        path = Path(run) / "summary.json"
        if not path.exists():
            raise DataError(f"{run}: no summary.json (is the run finished?)")
        s = read_run_json(path)
        parts = [read_run_json(p) for p in sorted(Path(run).glob("fold*/summary.json"))]
        try:
            if "mean" in s:  # K folds
                mean, std, folds = s["mean"], s["std"], int(s["folds"])
            else:
                mean, std, folds, parts = s["best"], dict.fromkeys(s["best"], 0.0), 1, [s]
            rows.append({
                "run": str(run),
                "model": s["model"],
                "parameters": s["parameters"],
                "device": s.get("device_name") or s["device"],
                "folds": folds,
                "mean": {k: float(mean[k]) for k in SUMMARY_METRICS},
                "std": {k: float(std[k]) for k in SUMMARY_METRICS},
                "epoch_seconds": float(np.mean([p["epoch_seconds_mean"] for p in parts])),
                "train_patients_per_s": float(np.mean([p["patients_per_s_mean"] for p in parts])),
                "majority_baseline_accuracy": _majority_share(Path(run)),
            })  # fmt: skip
        except DAMAGED as exc:  # a key missing or of the wrong type, here or in a fold's file
            raise DataError(f"{path}: damaged run file ({type(exc).__name__}: {exc})") from None
    return rows


def _majority_line(table: Sequence[dict[str, Any]]) -> str | None:
    """The majority-class baseline: one figure when the runs share it, else one per run."""
    rows = [r for r in table if r["majority_baseline_accuracy"] is not None]
    shares = {f"{r['majority_baseline_accuracy']:.3f}" for r in rows}
    if not shares:
        return None
    if len(shares) == 1:
        where = f"{shares.pop()} on these validation patients"
    else:  # different splits (other seeds, stores or --val-fraction): each run has its own
        where = ", ".join(
            f"{r['model'].upper()} {r['majority_baseline_accuracy']:.3f}" for r in rows
        )
        where += " on each run's own validation patients"
    return (
        f"Majority-class baseline: always predicting the larger class scores accuracy {where} "
        "— compare accuracy with it, and prefer balanced accuracy and AUC."
    )


def summary_markdown(table: Sequence[dict[str, Any]], figures: Sequence[str] = ()) -> str:
    """The rows of `summarize_runs` as a markdown table (mean ± std over folds)."""
    header = ["model", "parameters", "folds", *SUMMARY_METRICS, "epoch s", "train patients/s",
              "device"]  # fmt: skip
    lines = [
        "# Validation results",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for r in table:
        cells = [
            f"{r['mean'][k]:.3f} ± {r['std'][k]:.3f}" if r["folds"] > 1 else f"{r['mean'][k]:.3f}"
            for k in SUMMARY_METRICS
        ]
        speed = [f"{r['epoch_seconds']:.1f}", f"{r['train_patients_per_s']:.1f}", r["device"]]
        row = [r["model"].upper(), f"{r['parameters']:,}", str(r["folds"]), *cells, *speed]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Best epoch by validation AUC (ties: lower validation loss); patients/s is the "
              "mean training throughput."]  # fmt: skip
    baseline = _majority_line(table)
    if baseline:
        lines.append(baseline)
    if figures:
        lines += ["", *(f"![{name}]({name})" for name in figures)]
    return "\n".join(lines) + "\n"
