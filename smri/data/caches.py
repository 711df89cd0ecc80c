"""`--cache ram` and `--cache device`: the split held whole in memory, and which cache to use.

A cache reads its rows once (`load_rows`) and gathers every batch from memory; `resolve_cache`
turns --cache (auto included) into 'device', 'ram' or 'none' for the data's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from smri.config import CACHE_MODES
from smri.data.slots import host_empty, to_device
from smri.data.splits import EpochOrder
from smri.errors import ConfigError
from smri.store import StoreIdentity, StoreReader

SAFE_SHARE = 0.5  # `auto` caches when the data take at most this share of free memory
LOAD_CHUNK = 16  # patients per read when filling a cache


def load_rows(
    path: Path,
    rows: np.ndarray,
    device: torch.device,
    pin: bool = False,
    identity: StoreIdentity | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read `rows` of the store into one tensor on `device` (store dtype) plus float32 labels;
    `identity`: the file they were planned on (a store replaced since is refused)."""
    with StoreReader(path, expect=identity) as reader:
        shape = (len(rows), *reader.info.volume_shape)
        dtype = getattr(torch, reader.info.dtype)
        images = torch.empty(shape, dtype=dtype, device=device)
        staging = torch.empty((min(LOAD_CHUNK, len(rows)), *shape[1:]), dtype=dtype, pin_memory=pin)
        for start in range(0, len(rows), LOAD_CHUNK):
            chunk = rows[start : start + LOAD_CHUNK]
            buf = staging[: len(chunk)]
            reader.read_many(chunk, out=buf.numpy())  # values checked as read
            images[start : start + len(chunk)].copy_(buf, non_blocking=False)
        labels = torch.from_numpy(reader.labels[rows].astype(np.float32)).to(device)
    return images, labels


class _Cache:
    """Every row of the split on `target` (store dtype), read once; batches are gathered there.
    A cache holds all `rows` even with world > 1, since a rank's shard changes every epoch."""

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        order: EpochOrder,
        device: torch.device,
        target: torch.device,
        identity: StoreIdentity | None = None,
    ):
        self.order, self.device = order, device
        self.images: torch.Tensor | None
        self.labels: torch.Tensor | None
        self.images, self.labels = load_rows(path, rows, target, device.type == "cuda", identity)

    def gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of `positions`, ready to go to the device."""
        raise NotImplementedError

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches, on the device, images as float32."""
        for positions in self.order.batches(epoch):
            yield to_device(*self.gather(positions), self.device)

    def close(self) -> None:
        """Drop the cached tensors."""
        self.images = self.labels = None


class DeviceCache(_Cache):
    """The split resident on the device: an epoch is pure compute."""

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        order: EpochOrder,
        device: torch.device,
        identity: StoreIdentity | None = None,
    ):
        super().__init__(path, rows, order, device, target=device, identity=identity)

    def gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(positions).to(self.images.device)
        return self.images[idx], self.labels[idx]


class RamCache(_Cache):
    """The split in host memory; on CUDA each batch is pinned on its way to the GPU."""

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        order: EpochOrder,
        device: torch.device,
        identity: StoreIdentity | None = None,
    ):
        super().__init__(path, rows, order, device, torch.device("cpu"), identity)

    def gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(positions)
        labels = self.labels[idx]
        if self.device.type != "cuda":  # gathered straight into float32
            images = host_empty((len(positions), *self.images.shape[1:]), torch.float32)
            for k, row in enumerate(positions.tolist()):
                images[k].copy_(self.images[row])
            return images, labels
        return self.images[idx].pin_memory(), labels.pin_memory()


# ------------------------------------------------------------------------------ cache decisions
def available_host_bytes() -> int:
    """Memory the OS could give us now (MemAvailable), or total physical memory as a fallback."""
    from smri.parallel import available_memory

    return available_memory()


def resolve_cache(cache: str, device: torch.device, nbytes: int) -> str:
    """Turn --cache into 'device', 'ram' or 'none' for data of `nbytes`.

    auto: on CUDA the whole split goes on the GPU when it takes at most half its free memory,
    otherwise it streams; on CPU it is held in RAM when it takes at most half the available memory.
    """
    if cache not in CACHE_MODES:
        raise ConfigError(
            f"must be one of {', '.join(CACHE_MODES)}, got {cache!r}", option="--cache"
        )
    if device.type != "cuda" and cache == "device":
        return "ram"  # the device is the host
    if cache != "auto":
        if cache == "device":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > 0.9 * free:
                raise ConfigError(
                    f"the data need {nbytes / 2**30:.1f} GiB but the GPU has "
                    f"{free / 2**30:.1f} GiB free; use --cache none (stream) or --cache auto",
                    option="--cache",
                )
        return cache
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return "device" if nbytes <= SAFE_SHARE * free else "none"
    return "ram" if nbytes <= SAFE_SHARE * available_host_bytes() else "none"
