"""Figures as functions of data: loss curves, model comparisons and ROC curves (150 dpi PNG).

Each function takes arrays or metric rows and returns a matplotlib Figure built without pyplot
(no global state, no display); `save_figure` writes it. `plot_runs` reads run folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smri.atomic import OutputLock, atomic_path, check_not_input
from smri.errors import ConfigError, DataError
from smri.metrics import roc_auc, roc_curve
from smri.training.runs import (
    DAMAGED,
    read_metrics_csv,
    read_predictions_csv,
    read_run_json,
    write_json,
    write_text,
)

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
    with atomic_path(path) as tmp:  # never a half-written PNG, never through a link
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
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
    """Training (solid) and validation (dashed) loss per epoch; with several runs (folds), the
    mean ± std band over them and each run's own curve as a thin line."""
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


def plot_runs(runs: Sequence[Path], out: Path, store: Path | None = None) -> list[Path]:
    """CNNx_loss_curve.png per model, the all_models_* comparisons, summary.json and
    summary.md (`smri.compare`: intervals, paired tests, baselines); returns the files.

    Every run file is read, and the comparison computed, before anything is written."""
    from smri.compare import compare

    check_plot_out(out, runs)
    by_model: dict[str, RunData] = {}
    for run in runs:
        data = load_run(run)
        merged = by_model.setdefault(data.model, RunData(data.model))
        merged.metrics += data.metrics
        merged.predictions += data.predictions
    by_model = dict(sorted(by_model.items()))
    summary = compare(runs, store)  # every problem found before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):  # one `smri plot` at a time writes a folder
        return _write_plots(out, by_model, summary)


def check_plot_out(out: Path, runs: Sequence[Path]) -> None:
    """ConfigError (--out) when `out` is a file, or a run or fold folder: its summary.json
    would replace the run's own, and the run could not be plotted again."""
    from smri.export import RUN_FILES

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder", option="--out")
    check_not_input(out, [("RUN_DIR", run) for run in runs], "--out", folder=True, inside=False)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise ConfigError(
            f"{out} is an smri run folder ({', '.join(held)}); its summary.json would be "
            "replaced; choose another --out (e.g. figures/)",
            option="--out",
        )


def _write_plots(out: Path, by_model: dict[str, RunData], summary: dict) -> list[Path]:
    """The figures, summary.json and summary.md of `plot_runs` into `out`."""
    from smri.report import summary_markdown

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
    write_json(out / "summary.json", summary)
    summary_md = out / "summary.md"
    write_text(summary_md, summary_markdown(summary, [p.name for p in written]))
    return [*written, out / "summary.json", summary_md]
