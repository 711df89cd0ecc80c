"""The API of a trained model at work: `evaluate` (metrics on a store), `explain` (saliency
against the tumour), `predict` (raw patient folders) and `load_model` (the model itself)."""

from __future__ import annotations

import csv as csv_module
import os
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smri.api.common import Log, PathLike, bars, public, refuse_run_folder, silent
from smri.atomic import OutputLock, check_not_input
from smri.config import MOSTLY_OUTSIDE, SALIENCY_STEPS, ModelConfig
from smri.errors import ConfigError
from smri.messages import python_log, warning

if TYPE_CHECKING:
    import torch

    from smri.evaluation import Prediction

EVAL_FILES = ("metrics.json", "predictions.csv", "roc.png")  # what `evaluate` writes


# --------------------------------------------------------------------------------- evaluate
@public
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
    holdout: PathLike | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = python_log,
) -> dict[str, Any]:
    """Metrics of `model` on every labelled patient of `store` (`smri evaluate`).

    Writes metrics.json, predictions.csv and roc.png to `out` and returns metrics.json's
    content (checkpoint, store, n, accuracy, balanced_accuracy, auc, sensitivity,
    specificity, brier, ece, threshold, calibration, ...) plus ``"out"``, the folder (a
    `Path`). Probabilities are calibrated (the class weighting of training undone); class 1 is
    predicted at and above the model's threshold, the training share of class 1. When the
    store has masks, metrics.json also holds ``saliency_in_tumour_mean`` (and ``_n``): the
    mean share of the positive saliency inside the tumour, as `explain` computes it.

    With a run folder as `model`, every training of the run (each fold and seed) scores the
    patients: metrics.json holds each one's metrics, their mean and the ensemble's AUC (their
    mean probability), and predictions.csv one row per training and patient: what `plot`'s
    `test` reads. A patient any of those trainings trained or validated on is refused.

    Args:
        model: a checkpoint (a run's best.pt), a folder written by `export`, or a run folder
            (every training of it).
        store: the store to evaluate on.
        out: the folder for the results (None: ``eval-<store name>`` beside the checkpoint,
            or inside an exported folder).
        batch_size: patients per batch.
        device: ``"auto"``, ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        cache: ``"auto"``, ``"device"``, ``"ram"`` or ``"none"`` (stream), as for `train`.
        workers: DataLoader workers when streaming.
        saliency_patients: with masks: how many patients with tumour in the slab the
            saliency share is averaged over (the run's validation patients when the store
            holds them, else all; 0: skip it; not with a run folder).
        holdout: a holdout list (CSV with a ``patient_id`` column, as `holdout` writes):
            evaluate these patients of `store` only (None: all).
        overwrite: replace the results of an earlier evaluate in `out`.
        progress: show a progress bar (None: when stderr is a terminal).
        quiet: no progress bar and no info lines (warnings still).
        log: receives each info line and warning (default ``python_log``:
            warnings through ``warnings.warn`` as ``smri.SmriWarning``, info lines to the
            ``smri`` logger at INFO).
    """
    from smri.data.holdout import read_holdout
    from smri.evaluation import evaluate_store
    from smri.jsonfiles import write_json
    from smri.plots import roc_figure, save_figure
    from smri.training.runs import member_dirs, write_predictions

    model, store = Path(model), Path(store)
    chosen = None if holdout is None else read_holdout(Path(holdout))
    # best.pt and last.pt of a run share the default out: never replace one's results silently
    beside = model if model.is_dir() else model.parent
    where = Path(out) if out is not None else beside / f"eval-{store.stem}"
    _check_eval_out(where, overwrite, model, store)
    where.parent.mkdir(parents=True, exist_ok=True)
    every = model.is_dir() and bool(member_dirs(model, "best.pt"))  # a run folder
    with OutputLock(where):  # one evaluate at a time writes a folder
        _check_eval_out(where, overwrite, model, store)  # again: another may have written it
        if every:
            return _evaluate_run(model, store, chosen, where, device=device,
                                 batch_size=batch_size, cache=cache, workers=workers,
                                 progress=bars(progress, quiet))  # fmt: skip
        result = evaluate_store(model, store, device=device, batch_size=batch_size,
                                cache=cache, workers=workers, progress=bars(progress, quiet),
                                saliency_patients=saliency_patients,
                                saliency_steps=SALIENCY_STEPS, patients=chosen)  # fmt: skip
        where.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(model), "store": str(store), **result.metrics,
                  "threshold": result.threshold, "calibration": result.calibration}  # fmt: skip
        share = report.get("saliency_in_tumour_mean")
        if share is not None and share < MOSTLY_OUTSIDE:
            log(warning(f"warning: the saliency lies mostly outside the tumour (mean share "
                        f"{share:.2f} over {report['saliency_in_tumour_n']} patients): the "
                        "model may rely on something other than the tumour; see smri "
                        "explain"))  # fmt: skip
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
            log(warning("no ROC curve: the store does not have labelled patients of both classes"))
    return {**report, "out": where}


def _evaluate_run(
    run: Path, store: Path, patients: list[str] | None, where: Path, **settings: Any
) -> dict[str, Any]:
    """`evaluate` of every training of a run folder: metrics.json, predictions.csv (one row
    per training and patient) and roc.png (the trainings' curves, mean ± band) in `where`."""
    from smri.evaluation.members import evaluate_run, metrics_of, write_run_predictions
    from smri.jsonfiles import write_json
    from smri.plots import roc_figure, save_figure

    ev = evaluate_run(run, store, patients=patients, **settings)
    report = {"run": str(run), "store": str(store), "trainings": ev.members,
              **metrics_of(ev)}  # fmt: skip
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / "metrics.json", report)
    write_run_predictions(where / "predictions.csv", ev)
    known = ev.labels >= 0
    if len(set(ev.labels[known].tolist())) == 2:
        curves = {run.name or "run": [(ev.labels[known], p[known]) for p in ev.probabilities]}
        save_figure(roc_figure(curves, f"ROC on {store.name}"), where / "roc.png")
    return {**report, "out": where}


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
@public
def explain(
    model: PathLike,
    store: PathLike,
    patient_ids: str | Iterable[str] | None = None,
    *,
    out: PathLike | None = None,
    steps: int = SALIENCY_STEPS,
    batch_size: int = 8,
    device: str = "auto",
    nifti: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = python_log,
) -> dict[str, Any]:
    """Where `model` looks (`smri explain`): integrated gradients of every modality of each
    patient, a PNG montage per patient with the tumour's contour, and the share of the
    positive saliency inside the tumour.

    Writes ``<id>.png`` (with `nifti` also ``<id>_saliency.nii.gz``) and explain.json to `out`
    and returns explain.json's content (method,
    the summary: ``share_in_tumour_mean``, ``mostly_outside``, ``verdict``; ``rows``, one per
    patient) plus ``"out"``, the folder (a `Path`).

    Args:
        model: a checkpoint (a run's best.pt) or a folder written by `export`.
        store: the store whose patients to explain.
        patient_ids: one id or several (None: the validation patients of the model's run,
            from the split.json beside it, else the store's first 8).
        out: the folder for the figures and explain.json (None: ``explain-<store name>``
            beside the checkpoint, or inside an exported folder).
        steps: integrated-gradients steps: forward and backward passes per patient.
        batch_size: steps run at once.
        device: ``"auto"``, ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        nifti: also write each patient's saliency (signed integrated gradients toward the
            predicted class) as a 4-D NIfTI on its scan's voxel grid with the scan's affine:
            the scan's three axes, then one volume per modality in the store's order, zero
            outside the slab; it overlays the patient's own files in ITK-SNAP or 3D Slicer
            (needs a store of schema version 3).
        overwrite: replace an earlier explain.json in `out`.
        progress: show a progress bar (None: when stderr is a terminal).
        quiet: no progress bar and no info lines (warnings still).
        log: receives each info line and warning (default ``python_log``:
            warnings through ``warnings.warn`` as ``smri.SmriWarning``, info lines to the
            ``smri`` logger at INFO).
    """
    from smri.evaluation import check_out, explain_store

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
                               device=device, progress=bars(progress, quiet), nifti=nifti,
                               log=silent if quiet else log)  # fmt: skip
    return {**report, "out": where}


# ---------------------------------------------------------------------------------- predict
@public
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
    log: Log = python_log,
) -> list[Prediction]:
    """Probability of class 1 for raw NIfTI patient folders, preprocessed as `model`'s store
    was (`smri predict`); returns one `Prediction` (patient_id, probability, predicted class
    name) per usable folder, in the order given.

    A folder that cannot be used is reported through `log` and skipped; none usable is a
    DataError.

    Args:
        model: a checkpoint (a run's best.pt) or a folder written by `export`.
        patient_dirs: one patient folder or several (BraTS-style, a BIDS subject or session).
        csv: also write ``patient_id,probability,predicted`` to this file (None: do not).
        batch_size: patients per forward pass.
        device: ``"auto"``, ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        overwrite: replace an existing `csv` file.
        progress: show a progress bar (None: when stderr is a terminal).
        quiet: no progress bar.
        log: receives each skipped folder's line, a warning (default ``python_log``:
            warnings through ``warnings.warn`` as ``smri.SmriWarning``, info lines to the
            ``smri`` logger at INFO).
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


# ------------------------------------------------------------------------------- load_model
@public
def load_model(path: PathLike, *, device: str = "cpu") -> torch.nn.Module:
    """A trained model as a torch module in eval mode, from a checkpoint or an exported
    folder, checked (names, shapes, finite values) before it is used.

    The module takes ``(B, M, S, H, W)`` float tensors with values in [0, 1], as a store holds
    them, and returns logits ``(B,)``: ``torch.sigmoid`` of them is the probability of class
    1. It carries ``.config`` (its `smri.config.ModelConfig`), ``.modalities`` (the input's
    channel order) and ``.classes`` (class name -> label).

    Args:
        path: a checkpoint (a run's best.pt or last.pt), or a folder written by `export` (or
            its model.safetensors or config.json).
        device: ``"cpu"``, ``"auto"``, ``"cuda"`` or ``"cuda:N"``.
    """
    from smri.model_io import load_model as read_model
    from smri.model_io import model_from_checkpoint, resolve_device

    ckpt = read_model(Path(path))
    model = model_from_checkpoint(ckpt, resolve_device(device), str(path))
    model.config = ModelConfig.from_dict(ckpt["model_config"])
    model.modalities = tuple(ckpt["store"]["modalities"])
    model.classes = dict(ckpt["store"]["classes"])
    return model
