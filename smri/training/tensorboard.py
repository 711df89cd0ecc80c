"""TensorBoard event files of a run folder: per-epoch scalars and the best epoch's ROC.

Optional (`pip install 'smri[tensorboard]'`): without the package a run says so once and
writes the same CSV and JSON files as always. Each run or fold folder gets its own event
files, so `tensorboard --logdir runs/` shows one curve per run and per fold.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from smri.errors import ConfigError

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
    log(f"note: TensorBoard logs off: {INSTALL_HINT}")
    return False


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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
