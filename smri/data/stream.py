"""`--cache none`: batches streamed from the store by DataLoader workers, batch by batch.

Each worker opens the store itself (`LazyReader`) and reads a whole batch at once into a
shared-memory slot (`slots.batch_slots`), sending back only the slot's number; on CUDA the
slots go to the GPU by `slots.SlotFeeder`. With no workers the batches are read in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from smri.data.lazy import LazyReader
from smri.data.slots import (
    PREFETCH,
    SLACK,
    SlotFeeder,
    batch_slots,
    host_empty,
    host_float32,
    to_device,
)
from smri.data.splits import EpochOrder
from smri.errors import DataError
from smri.store import StoreIdentity


class BatchDataset(LazyReader, Dataset):
    """Rows of a store, batch by batch, for smri's own training (`smri.StoreDataset` is the
    per-patient Dataset for other loops); the file is opened on first access in each process,
    never across fork.

    Indexed by a list of positions (into `rows`), it returns one batch:
    images (K, M, S, H, W) in the store's dtype and labels (K,) float32.
    """

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        slots: list[torch.Tensor] | None = None,
        identity: StoreIdentity | None = None,
    ):
        self.path = Path(path)
        self.identity = identity
        self.rows = np.asarray(rows, dtype=np.int64)
        self.slots = slots or []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(
        self, item: tuple[int, list[int]] | list[int] | np.ndarray
    ) -> tuple[torch.Tensor | int, torch.Tensor]:
        """Batch `positions` (or `(k, positions)` from the epoch sampler): images and labels.

        With `slots`, batch k is read into slot ``k % len(slots)`` and its index is returned
        in place of the images (see `Streamed`).
        """
        k, positions = item if isinstance(item, tuple) else (None, item)
        rows = self.rows[np.asarray(positions)]
        try:  # in a DataLoader worker, an error returns as a value: one line in the parent
            labels = torch.from_numpy(self.reader.labels[rows].astype(np.float32))
            if self.slots and k is not None:
                slot = k % len(self.slots)
                images = self.slots[slot][: len(rows)]
                self.reader.read_many(rows, out=images.numpy())  # values checked as read
                return slot, labels
            shape = (len(rows), *self.reader.info.volume_shape)
            images = host_empty(shape, getattr(torch, self.reader.info.dtype))
            self.reader.read_many(rows, out=images.numpy())
            return images, labels
        except DataError as exc:
            return exc, None


class _EpochSampler(Sampler):
    """Yields the current epoch's batches as (batch number, positions); set `epoch` first."""

    def __init__(self, order: EpochOrder):
        self.order = order
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        for k, b in enumerate(self.order.batches(self.epoch)):
            yield k, b.tolist()

    def __len__(self) -> int:
        return len(self.order)


class Streamed:
    """Batches read from the store as they are needed, by `workers` DataLoader workers (none:
    in this process); with world > 1 only this rank's patients are read."""

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        order: EpochOrder,
        device: torch.device,
        workers: int,
        identity: StoreIdentity | None = None,
    ):
        self.device = device
        self._cuda = device.type == "cuda"
        self._sampler = _EpochSampler(order)
        self._slots: list[torch.Tensor] = []
        self._feeder: SlotFeeder | None = None
        if workers > 0:
            self._slots = batch_slots(path, order.batch_size, workers * PREFETCH + SLACK)
            if self._cuda:
                self._feeder = SlotFeeder(self._slots, device)
        self._loader: DataLoader | None = DataLoader(
            BatchDataset(path, rows, self._slots, identity),
            batch_size=None,
            sampler=self._sampler,
            num_workers=workers,
            pin_memory=False,  # batches are pinned as they leave their slot
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers > 0 else None,
            generator=torch.Generator(),  # keeps the global RNG untouched (same as caches)
        )

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches, on the device, images as float32."""
        self._sampler.epoch = epoch
        if self._feeder is not None:
            yield from self._feeder.epoch(self._loader)
            return
        for item, labels in self._loader:
            if isinstance(item, DataError):  # a worker could not read or use this batch
                raise item
            images = self._slots[item][: len(labels)] if self._slots else item
            if not self._cuda:  # out of its slot at once (the slot is reused later), as
                images = host_float32(images)  # the float32 training needs anyway
            yield to_device(images, labels, self.device)

    def close(self) -> None:
        """Stop the workers (if any) and unpin the slots."""
        if self._feeder is not None:
            self._feeder.close()
            self._feeder = None
        self._loader = None
        self._slots = []
