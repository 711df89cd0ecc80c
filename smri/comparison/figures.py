"""`smri plot`: the figures and the summary of finished runs, written into one folder.

`load_run` reads a run folder's metric rows and validation predictions; `plot_runs` computes
the comparison (`compare`) before writing anything, then draws the curves (`smri.plots`) and
writes summary.json and summary.md (`report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smri.atomic import OutputLock, check_not_input
from smri.comparison.compare import compare
from smri.comparison.report import SUMMARY_HEADINGS, summary_markdown
from smri.errors import ConfigError, DataError
from smri.jsonfiles import write_json
from smri.model_io import is_plot_summary, run_files
from smri.plots import (
    PNG_SIGNATURE,
    Rows,
    color_for,
    compare_figure,
    fold_loss_figure,
    reliability_figure,
    roc_figure,
    save_figure,
)
from smri.training.runs import (
    DAMAGED,
    read_metrics_csv,
    read_predictions_csv,
    read_run_json,
    write_text,
)


@dataclass
class RunData:
    """Metric rows and validation predictions of one run folder (one entry per fold)."""

    model: str
    metrics: list[Rows] = field(default_factory=list)
    predictions: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def load_run(run: Path) -> RunData:
    """A run folder, a K-fold folder whose fold*/ subfolders are runs, or a folder of repeated
    trainings whose seed*/ subfolders are either (one entry per training, seed by seed)."""
    run = Path(run)
    config = run / "config.json"
    if not config.exists():
        raise DataError(f"{run}: not an smri run folder (no config.json)")
    try:
        data = RunData(str(read_run_json(config)["model"]["name"]))
    except DAMAGED as exc:
        raise DataError(f"{config}: damaged run file ({type(exc).__name__}: {exc})") from None
    seeds = sorted((p for p in run.glob("seed*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    parts: list[Path] = []
    for root in seeds or [run]:
        folds = sorted(root.glob("fold*/metrics.csv"), key=lambda p: int(p.parent.name[4:]))
        parts += [p.parent for p in folds] or [root]
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


def plot_runs(
    runs: Sequence[Path], out: Path, store: Path | None = None, *, test: str | None = None
) -> list[Path]:
    """CNNx_loss_curve.png per model, the all_models_* comparisons, summary.json and
    summary.md (`smri.comparison.compare`: intervals, paired tests, baselines); returns the files.

    Every run file is read, and the comparison computed, before anything is written."""
    check_plot_out(out, runs)
    by_model: dict[str, RunData] = {}
    for run in runs:
        data = load_run(run)
        merged = by_model.setdefault(data.model, RunData(data.model))
        merged.metrics += data.metrics
        merged.predictions += data.predictions
    by_model = dict(sorted(by_model.items()))
    summary = compare(runs, store, test=test)  # every problem found before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):  # one `smri plot` at a time writes a folder
        check_own_outputs(out, plot_files(by_model, test is not None))
        tested = _write_test_plots(out, runs, test, summary) if test is not None else []
        return _write_plots(out, by_model, summary, tested)


def check_plot_out(out: Path, runs: Sequence[Path]) -> None:
    """ConfigError (--out) when `out` is a file, or a run or fold folder: its summary.json
    would replace the run's own, and the run could not be plotted again."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder", option="--out")
    check_not_input(out, [("RUN_DIR", run) for run in runs], "--out", folder=True, inside=False)
    held = run_files(out)  # plot's own summary.json (a first `smri plot`) is no run's
    if held and held != ["summary.json"]:  # one alone: `check_own_outputs` says whose it is
        raise ConfigError(
            f"{out} is an smri run folder ({', '.join(held)}); its summary.json would be "
            "replaced; choose another --out (e.g. figures/)",
            option="--out",
        )


def plot_files(by_model: dict[str, RunData], test: bool = False) -> list[str]:
    """The names `smri plot` writes into --out for these models (with the test set's)."""
    figures = ["test_roc.png", "test_reliability.png"] if test else []
    figures += [f"{model.upper()}_loss_curve.png" for model in by_model]
    figures += ["all_models_loss_curve.png", "all_models_accuracy.png"]
    if any(d.predictions for d in by_model.values()):
        figures.append("all_models_roc.png")
    return [*figures, "summary.json", "summary.md"]


def check_own_outputs(out: Path, names: Sequence[str]) -> None:
    """ConfigError (--out) when a file plot is about to replace in `out` is not one plot
    wrote: a figure that is not a PNG image, a summary.json that is not plot's comparison,
    a summary.md that is not its report. Plot's own earlier outputs are replaced: plotting
    again (the default figures/ included) remakes them from the runs."""
    for name in names:
        path = out / name
        if not path.exists():
            continue
        if name.endswith(".png"):
            own = _starts_with(path, PNG_SIGNATURE)
        elif name == "summary.json":
            own = is_plot_summary(path)
        else:
            own = any(_starts_with(path, h.encode()) for h in SUMMARY_HEADINGS)
        if not own:
            raise ConfigError(
                f"{path} exists and was not written by `smri plot`, which would replace it; "
                "choose another --out",
                option="--out",
            )


def _starts_with(path: Path, head: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(head)) == head
    except OSError:
        return False


def _write_test_plots(out: Path, runs: Sequence[Path], test: str, summary: dict) -> list[Path]:
    """test_roc.png (each model's trainings on the test patients, mean ± band) and
    test_reliability.png (each model's calibration, its trainings' predictions pooled)."""
    from smri.comparison.testset import read_test

    labels = [m["model"] for m in summary["test"]["models"]]
    evs = read_test(runs, test)
    curves, pooled = {}, {}
    for label, ev in zip(labels, evs, strict=True):
        m = ev.as_members()
        y = ev.labels[ev.labels >= 0]
        curves[label] = [(y, p) for p in m.probs]
        pooled[label] = (np.tile(y, len(m.probs)), m.probs.ravel())
    n = summary["test"]["patients"]
    roc = roc_figure(curves, f"ROC on the {n} untouched test patients")
    cal = reliability_figure(pooled, f"Calibration on the {n} untouched test patients")
    return [save_figure(roc, out / "test_roc.png"), save_figure(cal, out / "test_reliability.png")]


def _write_plots(
    out: Path, by_model: dict[str, RunData], summary: dict, tested: Sequence[Path] = ()
) -> list[Path]:
    """The figures, summary.json and summary.md of `plot_runs` into `out` (`tested`: the test
    set's figures, already written, listed first)."""
    written = list(tested)
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
