"""Figures as functions of data: loss curves, model comparisons and ROC curves.

Each function takes arrays or metric rows and returns a matplotlib Figure built without pyplot
(no global state, no display); `smri.plots.save_figure` writes it. matplotlib is imported when
a figure is drawn, not with the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from smri.metrics import roc_auc, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    """Training (solid) and validation (dashed) loss per epoch; with several runs (folds), the
    mean ± std band over them and each run's own curve as a thin line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    n = len(runs)
    suffix = f" (mean ± std, {n} folds)" if n > 1 else ""
    for key, style, name in (("train_loss", "-", "training"), ("val_loss", "--", "validation")):
        x, mean, std = mean_std_by_epoch(runs, key)
        _band(ax, x, mean, std, color, f"{name}{suffix}", style)
        for k, rows in enumerate(runs if n > 1 else ()):
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], color=color,
                    linestyle=style, linewidth=0.6, alpha=0.45,
                    label=f"each fold's {name}" if k == 0 else None)  # fmt: skip
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
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

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
    from matplotlib.figure import Figure

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


def reliability_figure(
    models: dict[str, tuple[np.ndarray, np.ndarray]], title: str, bins: int = 10
) -> Figure:
    """A reliability diagram per model: in each of `bins` equal-width bins of predicted
    probability, the observed share of class 1 against the mean probability (a calibrated
    model lies on the diagonal), with the predictions per bin as bars below. `models`: name ->
    (labels, probabilities), the predictions of all of a model's trainings pooled."""
    from matplotlib.figure import Figure

    from smri.metrics.calibration import brier, ece, reliability

    fig = Figure(figsize=(4.0 * max(1, len(models)), 4.6))
    axes = fig.subplots(2, max(1, len(models)), squeeze=False,
                        gridspec_kw={"height_ratios": [3, 1]}, sharex=True)  # fmt: skip
    order = list(models)
    for k, (name, (y, p)) in enumerate(models.items()):
        top, bottom = axes[0][k], axes[1][k]
        count, mean_p, observed = reliability(y, p, bins)
        full = count > 0
        color = color_for(name, order)
        top.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        top.plot(mean_p[full], observed[full], marker="o", color=color)
        top.set_title(f"{name.upper()}: Brier {brier(y, p):.3f}, ECE {ece(y, p, bins):.3f} "
                      "(pooled)", fontsize=9)  # fmt: skip
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("observed share of class 1" if k == 0 else "")
        edges = np.linspace(0, 1, bins + 1)
        bottom.bar(edges[:-1], count, width=1 / bins, align="edge", color=color, alpha=0.5)
        bottom.set_xlabel("predicted probability of class 1")
        bottom.set_ylabel("predictions" if k == 0 else "")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
