"""Which patients train and validate, and in which order: splits, folds, epoch batches, flips.

Every epoch's batches are a pure function of (seed, epoch): every source of batches (streamed
or cached) follows `EpochOrder`, so they all yield identical batches, and a resumed run sees the
same batches as an uninterrupted one without saving sampler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from smri.errors import ConfigError, DataError, plural


# ----------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Split:
    """Store rows used for training and validation (sorted), and where they came from."""

    train: np.ndarray
    val: np.ndarray
    seed: int
    val_fraction: float | None = None
    folds: int | None = None
    fold: int | None = None


def _class_rows(labels: np.ndarray, classes: dict[str, int]) -> dict[str, np.ndarray]:
    """Rows of each class; DataError unless both classes have patients."""
    rows = {name: np.flatnonzero(labels == value) for name, value in classes.items()}
    counts = ", ".join(f"{name}={len(r)}" for name, r in rows.items())
    if len(rows) != 2 or min(len(r) for r in rows.values()) == 0:
        raise DataError(f"training needs labelled patients of both classes; the store has {counts}")
    return rows


def stratified_split(
    labels: np.ndarray,
    classes: dict[str, int],
    val_fraction: float,
    seed: int,
    *,
    salt: int = 0x5917,
) -> Split:
    """Patient-level split keeping each class's share: round(n_c * val_fraction) rows of class c,
    at least one, go to validation. `salt` picks the random stream (the holdout has its own)."""
    if not 0 < val_fraction < 1:
        raise ConfigError(
            f"must be strictly between 0 and 1, got {val_fraction}", option="--val-fraction"
        )
    rng = np.random.default_rng([seed, salt])
    train, val = [], []
    for name, rows in _class_rows(labels, classes).items():
        if len(rows) < 2:
            raise DataError(
                f"class {name} has {plural(len(rows), 'labelled patient')}; a split needs at "
                "least 2 (one for training, one for validation)"
            )
        n_val = min(max(1, round(len(rows) * val_fraction)), len(rows) - 1)
        perm = rng.permutation(rows)
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return Split(
        np.sort(np.concatenate(train)),
        np.sort(np.concatenate(val)),
        seed,
        val_fraction=val_fraction,
    )


def stratified_folds(
    labels: np.ndarray, classes: dict[str, int], folds: int, seed: int
) -> list[Split]:
    """K stratified folds: every labelled patient is validated exactly once."""
    if folds < 2:
        raise ConfigError(f"needs at least 2 folds, got {folds}", option="--folds")
    rows_by_class = _class_rows(labels, classes)
    for name, rows in rows_by_class.items():
        if len(rows) < folds:
            raise ConfigError(
                f"{folds} folds need at least {folds} patients of every class; "
                f"class {name} has {len(rows)}",
                option="--folds",
            )
    rng = np.random.default_rng([seed, 0xF01D])
    assignment: dict[int, int] = {}
    offset = 0
    for rows in rows_by_class.values():
        for j, row in enumerate(rng.permutation(rows)):
            assignment[int(row)] = (offset + j) % folds
        offset += len(rows)  # continue the rotation so fold sizes stay balanced overall
    all_rows = np.array(sorted(assignment))
    fold_of = np.array([assignment[r] for r in all_rows])
    return [
        Split(all_rows[fold_of != k], all_rows[fold_of == k], seed, folds=folds, fold=k)
        for k in range(folds)
    ]


# --------------------------------------------------------------------------------------- batches
def strided_shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of `order`, as torch's DistributedSampler deals it out.

    `order` is padded by wrapping around to a multiple of `world` (every rank gets the same
    number of items, so the same number of steps), then rank r takes order[r::world].
    """
    if world == 1:
        return order
    total = math.ceil(len(order) / world) * world
    padded = np.resize(order, total) if len(order) else order  # np.resize repeats from the start
    return padded[rank:total:world]


def contiguous_shard(rows: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s contiguous block of `rows`, unpadded: the blocks in rank order are `rows`."""
    return np.array_split(np.asarray(rows), world)[rank]


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world: int = 1,
) -> list[np.ndarray]:
    """Positions 0..n-1 cut into batches; shuffled by np.random.default_rng([seed, epoch]).

    With world > 1, rank `rank` batches its `strided_shard` of that order; batch k of the
    ranks together is then batch k of a single process with batch_size * world (the last one
    topped up by the wrap-around padding).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    order = strided_shard(order, rank, world)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def n_batches(n: int, batch_size: int, world: int = 1) -> int:
    """Batches per epoch (per rank) of `epoch_batches`."""
    return math.ceil(math.ceil(n / world) / batch_size)


@dataclass(frozen=True)
class EpochOrder:
    """`epoch_batches` of `n` positions with every setting but the epoch fixed: the order that
    every source of batches (streamed or cached) follows."""

    n: int
    batch_size: int
    seed: int
    shuffle: bool
    rank: int = 0
    world: int = 1

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of `epoch`, as positions 0..n-1."""
        return epoch_batches(
            self.n, self.batch_size, self.seed, epoch, self.shuffle, self.rank, self.world
        )

    def __len__(self) -> int:
        return n_batches(self.n, self.batch_size, self.world)


def random_flips(
    x: torch.Tensor, seed: int, epoch: int, step: int, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """Flip each patient of (B, M, S, H, W) along each spatial axis with probability 1/2.

    All modalities of a patient flip together; the flips depend only on (seed, epoch, step).
    With world > 1 the flags are drawn for the global batch and rank r takes rows r::world,
    matching `epoch_batches`: patient for patient, the flips of a single process.
    """
    rng = np.random.default_rng([seed, epoch, step, 0xF119])
    flags = rng.random((x.shape[0] * world, 3))[rank::world] < 0.5
    out = x.clone()
    for axis in range(3):
        rows = np.flatnonzero(flags[:, axis])
        if rows.size:
            sel = torch.from_numpy(rows).to(x.device)
            out[sel] = out[sel].flip(2 + axis)
    return out
