"""The API of a trained model at work: `evaluate` (metrics on a store), `explain` (saliency
against the tumour) and `predict` (raw patient folders)."""

from __future__ import annotations

import csv as csv_module
import os
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smri.api.common import Log, PathLike, bars, refuse_run_folder, silent
from smri.atomic import OutputLock, check_not_input
from smri.config import MOSTLY_OUTSIDE, SALIENCY_STEPS
from smri.errors import ConfigError

if TYPE_CHECKING:
    from smri.evaluation import Prediction

EVAL_FILES = ("metrics.json", "predictions.csv", "roc.png")  # what `evaluate` writes


# --------------------------------------------------------------------------------- evaluate
def evaluate(
    model: PathLike,
    store: PathLike,
    *,
    out: PathLike | None = None,
    batch_size: int = 8,
    device: str = "auto",
    cache: str = "auto",
    workers: int = 2,
    saliency_patients: int = 16,
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Metrics of `model` (a checkpoint such as a run's best.pt, or an `smri export` folder)
    on every labelled patient of `store` (`smri evaluate`).

    Writes metrics.json, predictions.csv and roc.png to `out` (default: ``eval-<store name>``
    beside the checkpoint, or inside an exported folder) and returns metrics.json's content
    (checkpoint, store, n, accuracy, balanced_accuracy, auc, sensitivity, specificity, ...)
    plus ``"out"``, the folder. Earlier results in `out` are kept unless `overwrite`.
    When the store has masks, metrics.json also holds ``saliency_in_tumour_mean`` (and ``_n``):
    the mean share of the positive saliency inside the tumour (as `explain` computes it) over
    the first `saliency_patients` patients with tumour in the slab: of the run's validation
    patients when the store holds them, else of all (0: skip it).
    """
    from smri.evaluation import evaluate_store
    from smri.jsonfiles import write_json
    from smri.plots import roc_figure, save_figure
    from smri.training.runs import write_predictions

    model, store = Path(model), Path(store)
    # best.pt and last.pt of a run share the default out: never replace one's results silently
    beside = model if model.is_dir() else model.parent
    where = Path(out) if out is not None else beside / f"eval-{store.stem}"
    _check_eval_out(where, overwrite, model, store)
    if saliency_patients < 0:
        raise ConfigError(f"must be 0 or more, got {saliency_patients}",
                          option="--saliency-patients")  # fmt: skip
    where.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(where):  # one evaluate at a time writes a folder
        _check_eval_out(where, overwrite, model, store)  # again: another may have written it
        result = evaluate_store(model, store, device=device, batch_size=batch_size,
                                cache=cache, workers=workers, progress=bars(progress, quiet),
                                saliency_patients=saliency_patients,
                                saliency_steps=SALIENCY_STEPS)  # fmt: skip
        where.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(model), "store": str(store), **result.metrics,
                  "threshold": result.threshold, "calibration": result.calibration}  # fmt: skip
        share = report.get("saliency_in_tumour_mean")
        if share is not None and share < MOSTLY_OUTSIDE:
            log(f"warning: the saliency lies mostly outside the tumour (mean share {share:.2f} "
                f"over {report['saliency_in_tumour_n']} patients): the model may rely on "
                "something other than the tumour; see smri explain")  # fmt: skip
        write_json(where / "metrics.json", report)
        write_predictions(where / "predictions.csv", result.patient_ids, result.labels,
                          result.probabilities, result.classes,
                          threshold=result.threshold)  # fmt: skip
        known = result.labels >= 0
        if len(set(result.labels[known].tolist())) == 2:
            name = beside.name or "model"
            curves = {name: [(result.labels[known], result.probabilities[known])]}
            save_figure(roc_figure(curves, f"ROC on {store.name}"), where / "roc.png")
        else:
            log("no ROC curve: the store does not have labelled patients of both classes")
    return {**report, "out": str(where)}


def _check_eval_out(where: Path, overwrite: bool, model: Path, store: Path) -> None:
    """ConfigError (--out) when `where` is a run folder (whose predictions.csv it would
    replace), when a file it writes is MODEL or STORE, or when it holds results of an earlier
    evaluate and not `overwrite`."""
    refuse_run_folder(where, "evaluate would replace its predictions.csv")
    for name in EVAL_FILES:
        check_not_input(where / name, {"MODEL": model, "STORE": store}, "--out", inside=False)
    held = [n for n in EVAL_FILES if (where / n).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"{where} already holds evaluation results ({', '.join(held)}); choose another "
            "--out, or pass --overwrite to replace them",
            option="--out",
        )


# ---------------------------------------------------------------------------------- explain
def explain(
    model: PathLike,
    store: PathLike,
    patient_ids: str | Iterable[str] | None = None,
    *,
    out: PathLike | None = None,
    steps: int = SALIENCY_STEPS,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Where `model` looks (`smri explain`): integrated gradients of every modality of each
    patient of `store`, a PNG montage per patient with the tumour's contour, and the share of
    the positive saliency inside the tumour.

    `patient_ids`: one id or several (None: the validation patients of the model's run, from
    the split.json beside it, else the store's first 8). Writes ``<id>.png`` and explain.json
    to `out` (default ``explain-<store name>`` beside the checkpoint, or inside an exported
    folder) and returns explain.json's content (method, the summary: ``share_in_tumour_mean``,
    ``mostly_outside``, ``verdict``; ``rows``, one per patient) plus ``"out"``. `steps`:
    integration steps (forward and backward passes per patient). An earlier explain.json in
    `out` is kept unless `overwrite`.
    """
    from smri.evaluation import check_out, explain_store

    if steps < 1:
        raise ConfigError(f"must be at least 1, got {steps}", option="--steps")
    model, store = Path(model), Path(store)
    ids = [patient_ids] if isinstance(patient_ids, str) else list(patient_ids or ())
    beside = model if model.is_dir() else model.parent
    where = Path(out) if out is not None else beside / f"explain-{store.stem}"
    check_out(where, overwrite)
    refuse_run_folder(where, "explain would write its figures into it")
    where.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(where):  # one explain at a time writes a folder
        check_out(where, overwrite)  # again: another may have written it meanwhile
        report = explain_store(model, store, where, ids, steps=steps, batch_size=batch_size,
                               device=device, progress=bars(progress, quiet),
                               log=silent if quiet else log)  # fmt: skip
    return {**report, "out": str(where)}


# ---------------------------------------------------------------------------------- predict
def predict(
    model: PathLike,
    patient_dirs: PathLike | Iterable[PathLike],
    *,
    csv: PathLike | None = None,
    batch_size: int = 4,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = print,
) -> list[Prediction]:
    """Probability of class 1 for raw NIfTI patient folders, preprocessed as `model`'s store
    was (`smri predict`); returns one `Prediction` (patient_id, probability, predicted class
    name) per usable folder, in the order given.

    `patient_dirs`: one folder or several. A folder that cannot be used is reported through
    `log` and skipped; none usable is a DataError. `csv`: also write
    ``patient_id,probability,predicted`` there (an existing file only with `overwrite`).
    """
    from smri.atomic import atomic_open
    from smri.evaluation import predict_folders
    from smri.preprocessing import check_output

    folders = [Path(patient_dirs)] if isinstance(patient_dirs, (str, os.PathLike)) else [
        Path(p) for p in patient_dirs]  # fmt: skip
    with ExitStack() as held:
        if csv is not None:  # before the work: an existing file (a labels CSV?) is kept
            check_not_input(Path(csv), {"MODEL": Path(model)}, "--csv", inside=False)
            check_not_input(Path(csv), [("PATIENT_DIR", f) for f in folders], "--csv")
            check_output(Path(csv), overwrite)
            held.enter_context(OutputLock(Path(csv)))  # one predict at a time writes the CSV
        results = predict_folders(Path(model), folders, device=device, batch_size=batch_size,
                                  warn=log, progress=bars(progress, quiet))  # fmt: skip
        if csv is not None:  # written beside, renamed into place: never a half-written CSV
            with atomic_open(Path(csv), "w", newline="") as fh:
                writer = csv_module.writer(fh)
                writer.writerow(["patient_id", "probability", "predicted"])
                writer.writerows(
                    [r.patient_id, f"{r.probability:.6f}", r.predicted] for r in results
                )
    return results
