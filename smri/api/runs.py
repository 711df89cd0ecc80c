"""The API of models and run folders: `models` (the architectures and their sizes), `train` (a
run folder from a store, or a run resumed), `export` (a run's best model as a shareable folder)
`plot` (figures and summary comparing runs) and `holdout` (the untouched test patients of a
store, listed before anything trains)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smri.api.common import Log, PathLike, bars, public
from smri.config import MODEL_NAMES, ModelConfig, TrainConfig
from smri.discovery import DEFAULT_MODALITIES
from smri.errors import ConfigError, DataError, RunInterrupted
from smri.messages import python_log

if TYPE_CHECKING:
    from smri.training import Dist

_MODEL, _TRAIN = ModelConfig(), TrainConfig()
# Options that define a run: a resumed run keeps its own (only device, cache, workers change).
RUN_OPTIONS = (
    "model", "width", "dropout", "input_pool", "epochs", "batch_size", "lr", "weight_decay",
    "seed", "val_fraction", "folds", "fold", "class_weight", "amp", "compile", "augment",
    "seeds", "holdout",
)  # fmt: skip
MODEL_DESIGNS = {
    "cnn1": "conv blocks -> flatten -> FC 256 (baseline, large)",
    "cnn2": "conv blocks -> global average pooling",
    "cnn3": "CNN2 + squeeze-and-excitation (r=8)",
}


# ----------------------------------------------------------------------------------- models
@public
def models(
    *,
    shape: str | Sequence[int] = (len(DEFAULT_MODALITIES), *_MODEL.volume_shape),
    width: float = _MODEL.width,
    input_pool: int = _MODEL.input_pool,
) -> dict[str, Any]:
    """The models and their parameter counts at an input geometry (`smri models`).

    Every model is built (or refused) first. Returns ``{"shape", "width", "input_pool",
    "models"}``, `models` one dict per architecture: ``name``, ``cnn``, ``lstm_head`` and
    ``total`` parameters, ``embed`` (the CNN's embedding size) and ``design``. (The
    architectures themselves are `smri.networks`: ``smri.networks.build_model``.)

    Args:
        shape: the input geometry M x S x H x W (modalities, slices, height, width), a
            sequence of 4 or a string such as ``"4x32x240x240"``.
        width: the channel multiplier of the conv blocks (16-32-64-128 at 1).
        input_pool: average each slice over K x K voxels before the first conv block (1: off).
    """
    from smri.networks import build_model, count_parameters

    m, s, h, w = _parse_shape(shape)
    rows = []
    for name in MODEL_NAMES:
        cfg = ModelConfig(name=name, volume_shape=(s, h, w), width=width, input_pool=input_pool)
        model = build_model(cfg)
        cnn, total = count_parameters(model.cnn), count_parameters(model)
        rows.append({"name": name, "cnn": cnn, "lstm_head": total - cnn, "total": total,
                     "embed": model.cnn.out_features, "design": MODEL_DESIGNS[name]})  # fmt: skip
    return {"shape": (m, s, h, w), "width": width, "input_pool": input_pool, "models": rows}


def _parse_shape(shape: str | Sequence[int]) -> tuple[int, int, int, int]:
    """M x S x H x W from ``"4x32x240x240"`` (or ``4,32,240,240``) or a sequence of 4."""
    if isinstance(shape, str):
        try:
            values = tuple(int(v) for v in shape.lower().replace(",", "x").split("x"))
        except ValueError:
            values = ()
    else:
        values = tuple(shape)
    if len(values) != 4 or min(values) < 1:
        raise ConfigError(f"expected M x S x H x W such as 4x32x240x240, got {shape!r}", "--shape")
    return values  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ train
@public
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
    seeds: int = _TRAIN.seeds,
    holdout: PathLike | None = None,
    out: PathLike | None = None,
    resume: PathLike | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    tensorboard: bool | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    log: Log = python_log,
    dist: Dist | None = None,
) -> Path:
    """Train a CNN-LSTM on `store` into a run folder (`smri train`); returns the folder.

    The folder holds config.json, split.json, metrics.csv, best.pt, last.pt,
    predictions.csv, summary.json, loss_curve.png and, when tensorboard is installed, event
    files; with `folds` K, one such folder per fold (``fold0``, ...) plus the summary over
    folds. Every setting is checked before anything is written. Ctrl-C raises
    `RunInterrupted` (a KeyboardInterrupt) saying what the folder kept.

    Args:
        store: the store to train on (with `resume`: only if the file moved).
        model: the CNN that embeds each modality volume: ``"cnn1"``, ``"cnn2"`` or ``"cnn3"``.
        width: the channel multiplier of the conv blocks.
        dropout: the dropout rate on the LSTM's output (and CNN1's FC embedding), in [0, 1).
        input_pool: average each slice over K x K voxels before the first conv block.
        epochs: training epochs.
        batch_size: patients per batch (under torchrun: the global batch).
        lr: the AdamW learning rate (cosine decay over the epochs).
        weight_decay: the AdamW weight decay.
        seed: the seed of the split, the initial weights and every epoch's shuffle.
        val_fraction: the share of each class held out for validation (not with `folds`).
        folds: K-fold cross-validation: train all K folds (None: one split).
        fold: with `folds`, train only this fold (0-based; None: all).
        class_weight: ``"auto"`` (BCE pos_weight = n_neg / n_pos of the training split) or
            ``"none"``.
        device: ``"auto"`` (CUDA when present), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        amp: bf16 autocast on CUDA (ignored on CPU).
        compile: torch.compile the model (faster steps after ~30 s of compilation).
        cache: keep the store on the GPU (``"device"``), in RAM (``"ram"``), stream it
            (``"none"``), or choose (``"auto"``).
        workers: DataLoader workers when streaming.
        augment: random flips along each spatial axis, all modalities of a patient together.
        jobs: on a CPU: folds (or seeds) trained at once, each in its own process.
        seeds: train every fold (or the one split) this many times, each with its own
            initialisation, batch order, flips and dropout (the splits stay `seed`'s); the
            trainings go to ``seed0/``, ``seed1/``, ... and the summary pools them.
        holdout: a holdout list (CSV with a ``patient_id`` column, as `holdout` writes): the
            untouched test patients, never trained or validated on.
        out: the run folder (None: ``runs/<model>-<date>-<time>``).
        resume: continue the run in this folder from its last.pt, with its own settings
            (only `device`, `cache`, `workers` may change).
        overwrite: replace an existing run folder `out`.
        dry_run: check everything and log the plan (even when quiet); write nothing.
        tensorboard: write TensorBoard event files (None: when the package is installed).
        progress: show a progress bar per epoch (None: when stderr is a terminal).
        quiet: no per-epoch or info lines and no progress bars (warnings still).
        log: receives each info line and warning (default ``python_log``:
            warnings through ``warnings.warn`` as ``smri.SmriWarning``, info lines to the
            ``smri`` logger at INFO).
        dist: a started `smri.training.Dist` under torchrun (None: one process).
    """
    from smri.training import SINGLE, describe, load_run_config
    from smri.training import train as run_training

    dist = dist or SINGLE
    settings = {
        "model": model, "width": width, "dropout": dropout, "input_pool": input_pool,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "seed": seed, "val_fraction": val_fraction, "folds": folds, "fold": fold,
        "class_weight": class_weight, "amp": amp, "compile": compile, "augment": augment,
        "seeds": seeds, "holdout": None if holdout is None else str(Path(holdout).resolve()),
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
                     log=log, quiet=quiet, dist=dist, progress=bars(progress, quiet),
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


# ----------------------------------------------------------------------------------- export
@public
def export(
    run: PathLike,
    out: PathLike,
    *,
    fold: int | None = None,
    license: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write `run`'s best model to the folder `out` (`smri export`): model.safetensors,
    config.json and a README.md model card; returns the files written (`list[Path]`).

    config.json describes the input the model takes (``network_data_format``, as MONAI
    bundles do); the card's front matter holds the Hub's ``model-index``: the validation
    metrics, and the untouched test set's when ``run/test/metrics.json`` holds them
    (``evaluate(run, test_store, out=run / "test")``). Files already in `out` that an export
    does not write are kept. Needs the safetensors package (``pip install 'smri[export]'``).

    Args:
        run: the run folder to export.
        out: the folder to write.
        fold: of a K-fold run, the fold to export (0-based; a K-fold run needs one).
        license: a license id for the card's front matter, e.g. ``"mit"`` (None: no line).
        dataset: the Hugging Face Hub id of the training data set, e.g. ``"org/name"``, for
            the card's ``datasets`` and ``model-index`` (None: the cohort's folder name names
            it in ``model-index``, and there is no ``datasets`` line).
        overwrite: replace model.safetensors, config.json and README.md already in `out`.
    """
    from smri.model_io import export_run

    return export_run(Path(run), Path(out), fold=fold, license=license, dataset=dataset,
                      overwrite=overwrite)  # fmt: skip


# ------------------------------------------------------------------------------------- plot
@public
def plot(
    run_dirs: PathLike | Sequence[PathLike],
    *,
    out: PathLike = Path("figures"),
    store: PathLike | None = None,
    test: str | None = None,
) -> list[Path]:
    """Figures and a summary comparing finished runs in the folder `out` (`smri plot`);
    returns the files written (`list[Path]`).

    Loss, accuracy and ROC curves (K folds as mean ± std bands), every model's AUC and balanced
    accuracy with 95 % intervals, paired tests between models, and the majority and intensity
    baselines (summary.md, summary.json). Every run file is read before anything is written.

    Args:
        run_dirs: one run folder or several.
        out: the folder for the PNG figures, summary.md and summary.json.
        store: the store the runs trained on, for the intensity baseline (None: the one the
            first run's config.json records).
        test: the name of each run's subfolder holding its scores on the untouched test
            patients (``evaluate(run, test_store, out=run / test)``); summary.json then holds
            a ``test`` block and summary.md leads with it (None: validation only).
    """
    from smri.comparison import plot_runs

    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, os.PathLike)) else [
        Path(r) for r in run_dirs]  # fmt: skip
    return plot_runs(runs, Path(out), None if store is None else Path(store), test=test)


# ---------------------------------------------------------------------------------- holdout
@public
def holdout(
    store: PathLike,
    out: PathLike,
    *,
    fraction: float = 0.2,
    seed: int = _TRAIN.seed,
    overwrite: bool = False,
) -> Path:
    """Set aside a stratified share of `store`'s labelled patients as the untouched test set
    (`smri holdout`): writes the list to the CSV `out` (``patient_id,label``) and returns it.

    Give the list to `train(holdout=...)`, which never trains or validates on those patients,
    and to `evaluate(run, store, holdout=...)` at the end. Each class keeps its share, and at
    least one patient of each class stays on each side.

    Args:
        store: the store whose patients are split.
        out: the CSV file to write.
        fraction: the share of each class set aside, between 0 and 1.
        seed: the seed of the draw (a random stream of its own: never a split of `train`).
        overwrite: replace an existing `out`.
    """
    from smri.atomic import OutputLock, check_not_input
    from smri.data.holdout import holdout_rows, write_holdout
    from smri.preprocessing import check_output
    from smri.store import StoreReader

    store, out = Path(store), Path(out)
    check_not_input(out, {"STORE": store}, "OUT", inside=False)
    check_output(out, overwrite)
    with StoreReader(store) as reader:
        ids, labels, classes = reader.patient_ids, reader.labels.copy(), reader.info.classes
    rows = holdout_rows(labels, classes, fraction, seed)
    with OutputLock(out):
        write_holdout(out, [ids[i] for i in rows], labels[rows])
    return out
