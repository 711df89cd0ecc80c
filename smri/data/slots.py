"""Host memory for training batches, and the way to the device: the fast paths of `Batches`.

`host_empty` allocates batches through numpy (transparent huge pages); `batch_slots` makes the
shared-memory buffers that streaming workers read batches into, so only a slot's number crosses
processes; `SlotFeeder` page-locks those slots and copies each batch to the GPU off the compute
stream. The plain path (a fresh tensor per batch, `to_device`) reads the same without them.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from smri.errors import ConfigError, DataError
from smri.store import read_info

PREFETCH = 2  # batches each streaming worker reads ahead
SLACK = 2  # batch slots beyond those in flight: a slot is rewritten SLACK batches after use
SHARED_MEMORY = Path("/dev/shm")


def host_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory numpy allocated.

    Batches are tens to hundreds of MB, each allocated afresh, and touching fresh memory is
    slow on VMs. numpy asks the kernel for transparent huge pages for large arrays (madvise),
    torch does not by default: a batch then faults in a few hundred 2 MiB pages instead of tens of
    thousands of 4 KiB ones (tested; the gain on streamed input is in benchmarks/RESULTS.md).
    """
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return torch.from_numpy(np.empty(shape, dtype=np_dtype))


def host_float32(src: torch.Tensor) -> torch.Tensor:
    """`src` as a new float32 CPU tensor (see `host_empty`)."""
    out = host_empty(tuple(src.shape), torch.float32)
    out.copy_(src)
    return out


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device`, images as float32."""
    images = images.to(device, non_blocking=True).float()
    return images, labels.to(device, non_blocking=True)


# ---------------------------------------------------------------------------- shared-memory slots
def batch_slots(path: Path, batch_size: int, n: int) -> list[torch.Tensor]:
    """`n` shared-memory buffers of one batch each, made before the DataLoader workers start.

    Workers read batch k straight into slot ``k % n`` and send only its index. A batch lives
    in fresh shared memory otherwise, and touching fresh memory (about 1 GB/s on small VMs)
    limited streaming more than reading the store. At most ``workers * PREFETCH`` batches are
    in flight, and the loader asks for batch ``k + workers * PREFETCH`` as it hands out batch k,
    so with ``n = workers * PREFETCH + SLACK`` slots, batch k's slot is rewritten once batch
    ``k + SLACK`` is handed out: batch k must have left its slot by then (on the CPU it is copied
    out at once; on CUDA see `SlotFeeder`).
    """
    info = read_info(path)
    shape = (batch_size, *info.volume_shape)
    need = n * math.prod(shape) * np.dtype(info.dtype).itemsize
    free = shm_free_bytes()
    if free is not None and need > free:
        raise ConfigError(_shm_message(n, need, free), option="--cache")
    try:
        return [
            torch.empty(shape, dtype=getattr(torch, info.dtype)).share_memory_() for _ in range(n)
        ]
    except RuntimeError as exc:  # refused by the kernel all the same (a limit statvfs missed)
        raise ConfigError(_shm_message(n, need, shm_free_bytes(), exc), option="--cache") from None


def shm_free_bytes() -> int | None:
    """Free bytes of /dev/shm, where torch puts shared memory on Linux (None: no such mount)."""
    try:
        st = os.statvfs(SHARED_MEMORY)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _shm_message(n: int, need: int, free: int | None, exc: BaseException | None = None) -> str:
    """Why streaming cannot start for lack of shared memory, and what to do."""
    has = f"{free / 2**20:,.0f} MiB free" if free is not None else "too little"
    why = f" ({str(exc).strip().splitlines()[0][:120]})" if exc is not None else ""
    size = max(1, math.ceil(need * 1.25 / 2**30))
    return (
        f"streaming (--cache none) passes batches through shared memory: {n} batches (--workers "
        f"x {PREFETCH} + {SLACK}) need {need / 2**20:,.0f} MiB, and /dev/shm has {has}{why}; "
        f"Docker gives containers 64 MB by default. Use --cache ram, or give the container more "
        f"(docker run --shm-size={size}g), or fewer --workers or a smaller --batch-size"
    )


# ------------------------------------------------------------------------------- slots to the GPU
class SlotFeeder:
    """Moves streamed batches from their shared-memory slots to the GPU, off the compute stream.

    Once the DataLoader workers have forked, the slots are page-locked in place
    (cudaHostRegister), so a batch goes from the slot a worker read it into straight to the GPU
    by DMA, with no host copy, on a copy stream that overlaps the compute of the batches before.
    The compute stream waits for each copy; before the loader is asked for the next batch
    (which lets a worker rewrite the slot of the batch SLACK back), every copy but the latest
    SLACK - 1 is waited for. Where the slots cannot be registered, each batch is first copied
    into pinned memory, which frees its slot at once.
    """

    def __init__(self, slots: list[torch.Tensor], device: torch.device):
        self.slots, self.device = slots, device
        self.stream = torch.cuda.Stream(device)
        self.registered: list[torch.Tensor] = []
        self.pending: deque[torch.cuda.Event] = deque()
        self.tried = False

    def epoch(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one pass over `loader`, on the device, images as float32."""
        self.drain()  # the new epoch's first batches rewrite slots at once
        batches = iter(loader)  # forks the workers on first use
        if not self.tried:
            self.tried = True
            self._register()
        compute = torch.cuda.current_stream(self.device)
        try:
            while True:
                while len(self.pending) >= SLACK:
                    self.pending.popleft().synchronize()
                try:
                    slot, labels = next(batches)
                except StopIteration:
                    return
                if isinstance(slot, DataError):  # a worker could not read or use this batch
                    raise slot
                src = self.slots[slot][: len(labels)]
                with torch.cuda.stream(self.stream):
                    if not self.registered:
                        src = src.pin_memory()
                    images = src.to(self.device, non_blocking=True)
                    labels = labels.pin_memory().to(self.device, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record(self.stream)
                self.pending.append(done)
                compute.wait_event(done)
                images.record_stream(compute)  # allocated on the copy stream, used on compute
                labels.record_stream(compute)
                yield images.float(), labels
        finally:
            self.drain()

    def drain(self) -> None:
        """Wait for every copy out of the slots."""
        while self.pending:
            self.pending.popleft().synchronize()

    def close(self) -> None:
        """Wait for the copies and unpin the slots."""
        self.drain()
        cudart = torch.cuda.cudart()
        for t in self.registered:
            cudart.cudaHostUnregister(t.data_ptr())
        self.registered = []

    def _register(self) -> None:
        try:
            cudart = torch.cuda.cudart()
            for t in self.slots:
                nbytes = t.untyped_storage().nbytes()
                if int(cudart.cudaHostRegister(t.data_ptr(), nbytes, 0)) != 0:
                    break
                self.registered.append(t)
        except (AttributeError, RuntimeError):  # pragma: no cover - torch without cudart
            pass
        if len(self.registered) < len(self.slots):  # all or none: unpin a partial set
            _clear_cuda_error()
            self.close()


def _clear_cuda_error() -> None:  # pragma: no cover - only after a refused cudaHostRegister
    """Reset the CUDA runtime's last error, which a refused registration leaves set: torch
    checks it after every kernel launch and would fail an unrelated kernel. torch exposes no
    cudaGetLastError, so call it in the libcudart this process has loaded (best effort)."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "libcudart" in line}
        for lib in libs:
            ctypes.CDLL(lib).cudaGetLastError()
    except (OSError, AttributeError):
        pass
