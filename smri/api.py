"""The Python API: the library entry points that `smri`'s commands call, importable from `smri`.

    import smri
    cohort = smri.synth("demo", patients=16, shape=(32, 32, 40))
    smri.preprocess(cohort, "demo.h5")
    run = smri.train("demo.h5", model="cnn2", epochs=2, width=0.25)
    metrics = smri.evaluate(run / "best.pt", "demo.h5")
    report = smri.explain(run / "best.pt", "demo.h5")   # saliency against the tumour

Keyword arguments are the commands' options (`--batch-size` is `batch_size=`) with the same
defaults: those of the settings dataclasses (`smri.config`, `PreprocessConfig`, `SynthConfig`)
and, for options no dataclass holds, of these signatures, which the CLI reads. Errors are the
typed exceptions of `smri.errors` that the CLI maps to exit codes: `ConfigError` (settings;
exit 2), other `SmriError`s (data; exit 1). Messages name options as the CLI spells them.

Output: `log` receives info lines and warnings (default: print); `quiet` drops the info lines
and progress bars, never warnings; `progress` None shows bars when stderr is a terminal.
This module imports no torch: the work is imported on the first call. See docs/api.md.
"""

from __future__ import annotations

import csv as csv_module
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smri.atomic import OutputLock, check_not_input
from smri.config import MOSTLY_OUTSIDE, SALIENCY_STEPS, ModelConfig, TrainConfig
from smri.errors import ConfigError, DataError, RunInterrupted
from smri.parallel import DEFAULT_BACKEND, cap_jobs
from smri.phantoms import SynthConfig
from smri.preprocessing import PreprocessConfig, PreprocessSummary

if TYPE_CHECKING:
    from smri.evaluation import Prediction
    from smri.training import Dist

PathLike = str | os.PathLike
Log = Callable[[str], None]

_MODEL, _TRAIN, _PRE, _SYNTH = ModelConfig(), TrainConfig(), PreprocessConfig(), SynthConfig()
# Options that define a run: a resumed run keeps its own (only device, cache, workers change).
RUN_OPTIONS = (
    "model", "width", "dropout", "input_pool", "epochs", "batch_size", "lr", "weight_decay",
    "seed", "val_fraction", "folds", "fold", "class_weight", "amp", "compile", "augment",
)  # fmt: skip
EVAL_FILES = ("metrics.json", "predictions.csv", "roc.png")  # what `evaluate` writes


def _silent(_line: str) -> None:
    """The log of quiet calls."""


def _bars(progress: bool | None, quiet: bool) -> bool:
    """Whether to show progress bars: never when quiet; by default when stderr is a terminal."""
    if quiet:
        return False
    return sys.stderr.isatty() if progress is None else progress


# ------------------------------------------------------------------------------------ synth
def synth(
    out: PathLike,
    *,
    patients: int = _SYNTH.patients,
    hgg_fraction: float = _SYNTH.hgg_fraction,
    layout: str = _SYNTH.layout,
    format: str = _SYNTH.fmt,
    shape: tuple[int, int, int] = _SYNTH.shape,
    seed: int = _SYNTH.seed,
    jobs: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
) -> Path:
    """Write a BraTS-like phantom cohort to the folder `out` (`smri synth`); returns `out`.

    `out/truth.csv` records each case's class and tumour parameters. `jobs`: worker processes
    (None: all cores). The same settings write the same bytes.
    """
    from smri.phantoms import synthesize

    cfg = SynthConfig(patients=patients, hgg_fraction=hgg_fraction, shape=tuple(shape),
                      layout=layout, fmt=format, seed=seed)  # fmt: skip
    cfg.validate()
    jobs = _synth_jobs(cfg, cap_jobs(jobs, _silent))  # at most one per core, and as memory allows
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(Path(out)):  # a second synth into OUT stops here, before it deletes a file
        try:
            synthesize(cfg, Path(out), jobs=jobs, overwrite=overwrite,
                       progress=_bars(progress, quiet))  # fmt: skip
        except MemoryError:
            raise DataError(_synth_memory(cfg, "ran out of memory")) from None
        except Exception as exc:  # joblib's TerminatedWorkerError: a worker killed by the OS
            if type(exc).__name__ != "TerminatedWorkerError":
                raise
            raise DataError(_synth_memory(cfg, "a worker process was killed")) from None
    return Path(out)


# Peak memory of one phantom being made and written, per voxel of --shape: measured 38-52
# bytes (96^3 to 256x256x200); a margin on top.
SYNTH_BYTES_PER_VOXEL = 64


def _synth_jobs(cfg: SynthConfig, jobs: int) -> int:
    """Worker processes that fit in the available memory; ConfigError (--shape) if none does."""
    from smri.parallel import available_memory

    need = math.prod(cfg.shape) * SYNTH_BYTES_PER_VOXEL
    fits = available_memory() // need
    if fits < 1:
        raise ConfigError(_synth_memory(cfg, "too large for this machine", jobs=False),
                          option="--shape")  # fmt: skip
    return int(min(jobs, fits))


def _synth_memory(cfg: SynthConfig, what: str, jobs: bool = True) -> str:
    from smri.parallel import available_memory

    x, y, z = cfg.shape
    need = math.prod(cfg.shape) * SYNTH_BYTES_PER_VOXEL
    return (
        f"{what}: a phantom of {x}x{y}x{z} voxels takes about {need / 2**30:,.1f} GiB while it "
        f"is made, and {available_memory() / 2**30:,.1f} GiB are available; use a smaller "
        "--shape (the field of view stays 240x240x155 mm)" + (" or fewer --jobs" if jobs else "")
    )


# ------------------------------------------------------------------------------- preprocess
def preprocess(
    input: PathLike,
    output: PathLike,
    *,
    jobs: int | None = None,
    modalities: str | Sequence[str] = _PRE.modalities,
    slices: int = _PRE.slices,
    labels: PathLike | None = None,
    classes: str | Mapping[str, int] | None = None,
    label_column: str | None = None,
    positive: str | None = None,
    session: str | None = None,
    dtype: str = _PRE.dtype,
    compression: str = _PRE.compression,
    canonical: bool = _PRE.canonical,
    masks: bool = _PRE.masks,
    overwrite: bool = False,
    append: bool = False,
    resume: bool = False,
    strict: bool = False,
    backend: str = DEFAULT_BACKEND,
    scheduler: str | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = print,
) -> PreprocessSummary:
    """Preprocess the patient folders under `input` into the HDF5 store `output`
    (`smri preprocess`); returns the summary: `.written` per class, `.skipped` with reasons,
    `.output`, `.seconds`, `.warnings`, and `.line()`, the command's last line.

    `modalities`: names in order (``"flair,t1"`` or a sequence); `classes`: ``"LGG=0,HGG=1"``
    or a mapping (None: LGG=0,HGG=1, or with `positive`, ``not VALUE``=0 and VALUE=1);
    `labels`: a labels CSV. `masks`: store each patient's segmentation of the slab (schema
    version 2; never used in training). Messages (skipped patients, warnings) go to `log`;
    `quiet` only hides the progress bar, since preprocessing prints nothing else.
    """
    from smri.discovery import BidsOptions, parse_classes, parse_modalities
    from smri.files import special_kind

    if append and (overwrite or resume):
        raise ConfigError(
            f"--append cannot be combined with {'--overwrite' if overwrite else '--resume'}: "
            "an append adds to OUTPUT (and an interrupted one leaves it unchanged)"
        )
    labels_csv = None if labels is None else Path(labels)
    if labels_csv is not None and not labels_csv.is_file():
        kind = special_kind(labels_csv)
        problem = (f"is {kind}, not a regular file" if kind else "is a folder; expected a CSV "
                   "file" if labels_csv.is_dir() else "no such file")  # fmt: skip
        raise ConfigError(f"{labels_csv}: {problem}", option="--labels")
    if classes is None:
        class_names = {f"not {positive}": 0, positive: 1} if positive else dict(_PRE.classes)
    elif isinstance(classes, str):
        class_names = parse_classes(classes)
    else:
        class_names = parse_classes(",".join(f"{k}={v}" for k, v in classes.items()))
    names = modalities if isinstance(modalities, str) else ",".join(modalities)
    cfg = PreprocessConfig(modalities=parse_modalities(names), slices=slices, dtype=dtype,
                           compression=compression, canonical=canonical,
                           classes=class_names, masks=masks)  # fmt: skip
    common = {
        "jobs": jobs, "labels_csv": labels_csv, "strict": strict, "backend": backend,
        "scheduler": scheduler, "progress": _bars(progress, quiet), "echo": log,
        "bids": BidsOptions(label_column, positive, session),
    }  # fmt: skip
    if append:
        from smri.preprocessing import append_preprocess

        return append_preprocess(Path(input), Path(output), cfg, **common)
    from smri.preprocessing import run_preprocess

    return run_preprocess(Path(input), Path(output), cfg, overwrite=overwrite, resume=resume,
                          **common)  # fmt: skip


# ------------------------------------------------------------------------------------ train
def train(
    store: PathLike | None = None,
    model: str = _MODEL.name,
    *,
    width: float = _MODEL.width,
    dropout: float = _MODEL.dropout,
    input_pool: int = _MODEL.input_pool,
    epochs: int = _TRAIN.epochs,
    batch_size: int = _TRAIN.batch_size,
    lr: float = _TRAIN.lr,
    weight_decay: float = _TRAIN.weight_decay,
    seed: int = _TRAIN.seed,
    val_fraction: float = _TRAIN.val_fraction,
    folds: int | None = _TRAIN.folds,
    fold: int | None = _TRAIN.fold,
    class_weight: str = _TRAIN.class_weight,
    device: str = _TRAIN.device,
    amp: bool = _TRAIN.amp,
    compile: bool = _TRAIN.compile,
    cache: str = _TRAIN.cache,
    workers: int = _TRAIN.workers,
    augment: bool = _TRAIN.augment,
    jobs: int = _TRAIN.jobs,
    out: PathLike | None = None,
    resume: PathLike | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    tensorboard: bool | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = print,
    dist: Dist | None = None,
) -> Path:
    """Train a CNN-LSTM on `store` into a run folder (`smri train`); returns the folder.

    The folder (`out`, default ``runs/<model>-<date>-<time>``) holds config.json, split.json,
    metrics.csv, best.pt, last.pt, predictions.csv, summary.json, loss_curve.png and, when
    tensorboard is installed, event files; with `folds` K, one such folder per fold (`fold0`,
    ...) plus the summary over folds. `resume=RUN` continues RUN with its own settings (only
    `device`, `cache`, `workers` may change; `store` if the file moved). `dry_run` checks
    everything and logs the plan (even when quiet), writing nothing. `tensorboard` None: event
    files when the package is installed. Ctrl-C raises `RunInterrupted` (a KeyboardInterrupt)
    saying what the folder kept. `dist`: a started `smri.training.Dist` under torchrun.
    """
    from smri.training import SINGLE, describe, load_run_config
    from smri.training import train as run_training

    dist = dist or SINGLE
    settings = {
        "model": model, "width": width, "dropout": dropout, "input_pool": input_pool,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "seed": seed, "val_fraction": val_fraction, "folds": folds, "fold": fold,
        "class_weight": class_weight, "amp": amp, "compile": compile, "augment": augment,
    }  # fmt: skip
    if resume is not None:
        _check_resume_options(settings, out, overwrite)
        saved_store, model_cfg, cfg = dist.on_main(lambda: load_run_config(Path(resume)))
        cfg = replace(cfg, device=device, cache=cache, workers=workers, jobs=jobs)
        store, run = Path(store) if store is not None else saved_store, Path(resume)
        if store is saved_store and not store.exists():  # moved, or another machine's path
            raise DataError(
                f"{store}: no such store (the one {run / 'config.json'} records); if it moved, "
                f"give it: smri train STORE --resume {run}"
            )
    elif store is None:
        raise ConfigError("give a STORE to train on, or --resume RUN_DIR")
    else:
        model_cfg = ModelConfig(name=model, width=width, dropout=dropout, input_pool=input_pool)
        cfg = TrainConfig(
            **{k: v for k, v in settings.items() if k in TrainConfig.__dataclass_fields__},
            device=device, cache=cache, workers=workers, jobs=jobs,
        )  # fmt: skip
        stamp = dist.broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"))  # one name for all ranks
        store = Path(store)
        run = Path(out) if out is not None else Path("runs") / f"{model}-{stamp}"
    if dry_run:
        for line in describe(store, model_cfg, cfg, dist):
            if dist.is_main:
                log(line)
        return run
    try:
        run_training(store, model_cfg, cfg, run, resume=resume is not None, overwrite=overwrite,
                     log=log, quiet=quiet, dist=dist, progress=_bars(progress, quiet),
                     tensorboard=tensorboard)  # fmt: skip
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(run)) from None
    return run


def _check_resume_options(settings: dict[str, Any], out: Any, overwrite: bool) -> None:
    """ConfigError for settings given with resume (they come from the run's config.json)."""
    if overwrite:
        raise ConfigError("--resume continues the run in place; drop --overwrite",
                          option="--overwrite")  # fmt: skip
    defaults = {**vars(_TRAIN), "model": _MODEL.name, "width": _MODEL.width,
                "dropout": _MODEL.dropout, "input_pool": _MODEL.input_pool}  # fmt: skip
    given = [f"--{n.replace('_', '-')}" for n in RUN_OPTIONS if settings[n] != defaults[n]]
    given += ["--out"] if out is not None else []
    if given:
        raise ConfigError(f"--resume continues a run with its own settings; drop {given[0]}",
                          option=given[0])  # fmt: skip


def interrupted_message(out: Path) -> str:
    """What Ctrl-C left in the run folder `out`, and how to go on."""
    if not (out / "config.json").exists():
        return f"Interrupted before the run started; {out} holds nothing to resume."
    if (out / "last.pt").exists():
        kept = f"{out}/last.pt holds the last finished epoch"
    elif any(out.glob("fold*/last.pt")):
        kept = f"each fold's last.pt in {out} holds its last finished epoch"
    else:
        kept = "no epoch had finished; the run starts from epoch 1"
    return f"Interrupted; {kept}. Continue with: smri train --resume {out}"


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
                                cache=cache, workers=workers, progress=_bars(progress, quiet),
                                saliency_patients=saliency_patients,
                                saliency_steps=SALIENCY_STEPS)  # fmt: skip
        where.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(model), "store": str(store), **result.metrics}
        share = report.get("saliency_in_tumour_mean")
        if share is not None and share < MOSTLY_OUTSIDE:
            log(f"warning: the saliency lies mostly outside the tumour (mean share {share:.2f} "
                f"over {report['saliency_in_tumour_n']} patients): the model may rely on "
                "something other than the tumour; see smri explain")  # fmt: skip
        write_json(where / "metrics.json", report)
        write_predictions(where / "predictions.csv", result.patient_ids, result.labels,
                          result.probabilities, result.classes)  # fmt: skip
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
    _refuse_run_folder(where, "evaluate would replace its predictions.csv")
    for name in EVAL_FILES:
        check_not_input(where / name, {"MODEL": model, "STORE": store}, "--out", inside=False)
    held = [n for n in EVAL_FILES if (where / n).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"{where} already holds evaluation results ({', '.join(held)}); choose another "
            "--out, or pass --overwrite to replace them",
            option="--out",
        )


def _refuse_run_folder(where: Path, why: str) -> None:
    """ConfigError (--out) when `where` is a run or fold folder: `why` says what would happen."""
    from smri.model_io import run_files

    held = run_files(where)  # a folder `smri plot` wrote into is no run
    if held:
        raise ConfigError(
            f"{where} is an smri run folder ({', '.join(held)}); {why}; choose another "
            "--out (e.g. a new subfolder)",
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
    _refuse_run_folder(where, "explain would write its figures into it")
    where.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(where):  # one explain at a time writes a folder
        check_out(where, overwrite)  # again: another may have written it meanwhile
        report = explain_store(model, store, where, ids, steps=steps, batch_size=batch_size,
                               device=device, progress=_bars(progress, quiet),
                               log=_silent if quiet else log)  # fmt: skip
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
                                  warn=log, progress=_bars(progress, quiet))  # fmt: skip
        if csv is not None:  # written beside, renamed into place: never a half-written CSV
            with atomic_open(Path(csv), "w", newline="") as fh:
                writer = csv_module.writer(fh)
                writer.writerow(["patient_id", "probability", "predicted"])
                writer.writerows(
                    [r.patient_id, f"{r.probability:.6f}", r.predicted] for r in results
                )
    return results
