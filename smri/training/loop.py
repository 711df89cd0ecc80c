"""One epoch of training and one evaluation: the step order, plainly (nanoGPT's `train.py`).

Under torchrun (a `Dist` with world_size > 1, see smri.training.distributed) the same loop runs
on every rank: each rank trains on its strided shard of every epoch's order, and validation is
sharded and gathered so its metrics equal a single-process evaluation.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from smri.data import Batches, random_flips
from smri.errors import DataError
from smri.metrics import binary_metrics
from smri.metrics.calibration import balanced_threshold, undo_class_weight
from smri.training.distributed import SINGLE, Dist


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epoch: int,
    *,
    amp: bool,
    augment: bool,
    seed: int,
    dist: Dist = SINGLE,
    progress: bool | None = None,
) -> dict[str, float]:
    """One pass over the training batches; returns mean loss, accuracy, seconds, patients/s,
    and ``bad_step``: the first step whose loss was NaN or Inf on this rank (None: none was),
    ``bad_steps`` their number over all ranks. Flagged on the device (no wait per step); the
    caller stops the run before such an epoch is saved.

    With several ranks the loss, accuracy and patient count are summed over all of them.
    `progress`: a bar on rank 0 (None: when stderr is a terminal).
    """
    from tqdm.auto import tqdm

    model.train()
    device = batches.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bad = torch.zeros(len(batches), device=device, dtype=torch.bool)
    n = 0
    start = time.perf_counter()
    show = (_tty() if progress is None else progress) and dist.is_main
    bar = tqdm(total=len(batches), desc=f"epoch {epoch}", leave=False, disable=not show)
    for step, (images, labels) in enumerate(batches.epoch(epoch)):
        if augment:
            images = random_flips(images, seed, epoch, step, dist.rank, dist.world_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bad[step] = ~torch.isfinite(loss.detach())
        loss_sum += loss.detach() * len(labels)
        correct += ((logits.detach() >= 0) == (labels >= 0.5)).sum()
        n += len(labels)
        bar.update()
    bar.close()
    steps = np.flatnonzero(bad.cpu().numpy())  # waits for the GPU
    loss_total, n_correct, n, n_bad = dist.sum([loss_sum.item(), correct.item(), n, len(steps)])
    mean_loss, acc = loss_total / n, n_correct / n
    seconds = time.perf_counter() - start
    return {"loss": mean_loss, "accuracy": acc, "seconds": seconds, "patients_per_s": n / seconds,
            "bad_step": int(steps[0]) if len(steps) else None, "bad_steps": int(n_bad)}  # fmt: skip


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Batches, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every patient of `batches`, in order (eval mode)."""
    model.eval()
    logits, labels = [], []
    for images, y in batches.epoch(0):
        with torch.autocast(batches.device.type, dtype=torch.bfloat16, enabled=amp):
            logits.append(model(images).float())
        labels.append(y)
    if not logits:  # a rank whose validation shard is empty
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    return torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(
    model: nn.Module,
    batches: Batches,
    criterion: nn.Module,
    amp: bool,
    dist: Dist = SINGLE,
    *,
    offset: float = 0.0,
) -> tuple[dict[str, float], np.ndarray]:
    """Validation loss and metrics; also returns the probabilities of class 1, calibrated by
    adding `offset` to the logits (it undoes the class weighting, smri.metrics.calibration),
    and the metrics count class 1 where the raw logit is >= 0, the balanced rule training with
    class weights aims at (a calibrated probability at or above `balanced_threshold(offset)`).

    With several ranks, `batches` is this rank's contiguous shard; the logits and labels of
    all shards are gathered in order, so every rank computes the metrics of the whole split.
    """
    logits, labels = predict_batches(model, batches, amp)
    logits, labels = dist.gather(logits), dist.gather(labels)
    bad = np.flatnonzero(~np.isfinite(logits))
    if bad.size:  # never a metric: NaN is no class
        raise NonFiniteOutput(bad)
    loss = criterion(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    probs = undo_class_weight(logits, offset)
    return {"loss": loss, **binary_metrics(labels, probs, balanced_threshold(offset))}, probs


class NonFiniteOutput(DataError):
    """The model's output for some patients was NaN or Inf (positions in the batches' order)."""

    def __init__(self, positions: np.ndarray):
        super().__init__(f"the model's output is not a number for {len(positions)} patients")
        self.positions = positions


def _tty() -> bool:
    return sys.stderr.isatty()
