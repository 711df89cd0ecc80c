"""`Batches`: the training input, one epoch at a time, from the source that `--cache` names.

Every epoch's batches are a pure function of (seed, epoch) (`splits.EpochOrder`): the
streaming source (DataLoader workers reading the store) and the caches (the split in RAM or on
the GPU) yield identical batches, and a resumed run sees the same batches as an uninterrupted one
without saving sampler state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from smri.data.caches import DeviceCache, RamCache
from smri.data.splits import EpochOrder
from smri.data.stream import Streamed
from smri.store import StoreIdentity


class Batches:
    """Batches of (images float32 (B, M, S, H, W), labels float32 (B,)) on `device`.

    `cache` is 'device' (`DeviceCache`: the whole split resident on the device, an epoch is
    pure compute), 'ram' (`RamCache`: resident in host memory, pinned for CUDA) or 'none'
    (`Streamed`: DataLoader workers stream from the store). All three yield identical batches
    for the same seed and epoch.

    With world > 1 this rank gets its `strided_shard` of each epoch's order (torchrun/DDP):
    streaming reads only those patients; a cache holds all `rows`, since the shard changes
    every epoch.

    `identity` is the store file the rows were planned on (`StoreInfo.identity`): every
    source that opens the store again refuses another file at that path.
    """

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        cache: str,
        device: torch.device,
        workers: int = 0,
        rank: int = 0,
        world: int = 1,
        identity: StoreIdentity | None = None,
    ):
        self.store = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cache, self.device = cache, device
        self.order = EpochOrder(len(self.rows), batch_size, seed, shuffle, rank, world)
        self.source: Streamed | RamCache | DeviceCache
        if cache == "none":
            self.source = Streamed(self.store, self.rows, self.order, device, workers, identity)
        elif cache == "ram":
            self.source = RamCache(self.store, self.rows, self.order, device, identity)
        elif cache == "device":
            self.source = DeviceCache(self.store, self.rows, self.order, device, identity)
        else:
            raise ValueError(f"cache must be 'device', 'ram' or 'none', got {cache!r}")

    def __len__(self) -> int:
        return len(self.order)

    def batch_rows(self, epoch: int, step: int) -> np.ndarray:
        """The store rows of batch `step` of `epoch` (this rank's), as `epoch` yields them."""
        return self.rows[self.order.batches(epoch)[step]]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches, on the device, images as float32."""
        return self.source.epoch(epoch)

    def close(self) -> None:
        """Stop streaming workers (if any) and drop cached tensors."""
        self.source.close()
