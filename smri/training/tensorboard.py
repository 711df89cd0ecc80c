"""TensorBoard event files of a run folder: per-epoch scalars, the best epoch's ROC, and the
run's hyperparameters with its final metrics for the HParams dashboard.

Optional (`pip install 'smri[tensorboard]'`): without the package a run says so once and
writes the same CSV and JSON files as always. Each run or fold folder gets its own event
files, so `tensorboard --logdir runs/` shows one curve per run and per fold, and one row per
run and per fold in the HParams dashboard.
"""

from __future__ import annotations

import importlib.util
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smri.config import ModelConfig, TrainConfig
from smri.errors import ConfigError
from smri.messages import warning

INSTALL_HINT = "pip install 'smri[tensorboard]'"


def available() -> bool:
    """Whether the tensorboard package is installed (torch's SummaryWriter needs it)."""
    return importlib.util.find_spec("tensorboard") is not None


def resolve(wanted: bool | None, log: Callable[[str], None]) -> bool:
    """Whether to write event files: `wanted` None means when the package is installed (and
    says once how to get it when not); True without the package is a ConfigError."""
    if wanted is False:
        return False
    if available():
        return True
    if wanted:
        raise ConfigError(
            f"TensorBoard logs need the tensorboard package: {INSTALL_HINT}",
            option="--tensorboard",
        )
    log(warning(f"note: TensorBoard logs off: {INSTALL_HINT}"))
    return False


# The settings that make one run differ from another: the HParams dashboard's columns. Where
# they run (device, cache, workers, jobs) and which patients are held out are left out.
MODEL_HPARAMS = ("name", "width", "dropout", "hidden", "input_pool")
TRAIN_HPARAMS = (
    "epochs", "batch_size", "lr", "weight_decay", "seed", "val_fraction", "folds", "fold",
    "seeds", "repeat", "class_weight", "amp", "compile", "augment",
)  # fmt: skip
FINAL = "final"  # the tag group of the final metrics: final/auc, final/balanced_accuracy, ...


def hparams_of(model_cfg: ModelConfig, cfg: TrainConfig) -> dict[str, Any]:
    """A run's hyperparameters as the HParams dashboard takes them (numbers and strings): the
    model's as ``model``, ``width``, ..., ``volume_shape`` as ``"SxHxW"``, flags as ``"true"``
    or ``"false"``; unset ones (``folds`` of a single split) left out."""
    values = {"model" if k == "name" else k: getattr(model_cfg, k) for k in MODEL_HPARAMS}
    values["volume_shape"] = "x".join(str(n) for n in model_cfg.volume_shape)
    values.update({k: getattr(cfg, k) for k in TRAIN_HPARAMS})
    return {k: _hparam(v) for k, v in values.items() if v is not None}


def _hparam(value: Any) -> float | int | str:
    """One setting as the hparams plugin stores it: numpy numbers as Python's (a sweep over
    np.arange passes them), a flag as "true"/"false" (torch would store the number 1 or 0)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def scalar_tag(key: str) -> str:
    """TensorBoard tag of a metrics.csv column: train_loss -> loss/train, val_auc -> auc/val,
    so each metric's training and validation curves share a chart; lr -> lr."""
    for side in ("train", "val"):
        if key.startswith(f"{side}_"):
            return f"{key[len(side) + 1 :]}/{side}"
    return key


class Board:
    """The event files of one run (or fold) folder; every method is a no-op when disabled.

    `first_epoch` > 1 (a resumed run) purges the events a crashed session wrote from that
    epoch on, so the curves continue without a doubled tail.
    """

    def __init__(self, folder: Path, first_epoch: int = 1, enabled: bool = True):
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            purge = first_epoch if first_epoch > 1 else None
            self._writer = SummaryWriter(log_dir=str(folder), purge_step=purge)

    def epoch(self, row: dict[str, float]) -> None:
        """One metrics.csv row as scalars at step `row['epoch']`."""
        if self._writer is None:
            return
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                self._writer.add_scalar(scalar_tag(key), float(value), step)
        self._writer.flush()

    def roc(self, labels: np.ndarray, probabilities: np.ndarray, epoch: int, name: str) -> None:
        """The ROC curve of the best epoch's validation predictions, as an image."""
        if self._writer is None or len(np.unique(labels)) < 2:
            return
        from smri.plots import roc_figure

        fig = roc_figure({name: [(labels, probabilities)]}, f"{name}: best epoch {epoch}")
        self._writer.add_figure("roc/best_epoch", fig, epoch, close=False)
        self._writer.flush()

    def hparams(self, settings: dict[str, Any], metrics: dict[str, float], epoch: int) -> None:
        """The run's row in the HParams dashboard: `settings` (see `hparams_of`) and the final
        `metrics` (best.pt's on the validation patients, as summary.json's ``best``) as scalars
        ``final/<metric>`` at step `epoch`, with ``final/epoch``.

        Written as the hparams plugin's session start and end (what `add_hparams` writes) into
        this folder's own event file, without an experiment summary: TensorBoard then builds
        the dashboard's columns from every run's sessions, so runs of different settings and
        folds sit side by side.
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        _experiment, start, end = hparams(settings, {})
        self._writer.file_writer.add_summary(start, epoch)
        self._writer.file_writer.add_summary(end, epoch)
        for key, value in {**metrics, "epoch": epoch}.items():
            self._writer.add_scalar(f"{FINAL}/{key}", float(value), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
