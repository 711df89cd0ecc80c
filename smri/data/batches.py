"""Training input: a torch Dataset over the store, whole-store caches, batches and splits.

Every epoch's batches are a pure function of (seed, epoch): the streaming path (DataLoader workers
reading the store) and the cached paths (the store in RAM or on the GPU) yield identical batches,
and a resumed run sees the same batches as an uninterrupted one without saving sampler state.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from smri.config import CACHE_MODES
from smri.errors import ConfigError, DataError, plural
from smri.store import StoreReader, read_info

SAFE_SHARE = 0.5  # `auto` caches when the data take at most this share of free memory
LOAD_CHUNK = 16  # patients per read when filling a cache
PREFETCH = 2  # batches each streaming worker reads ahead
SLACK = 2  # batch slots beyond those in flight: a slot is rewritten SLACK batches after use


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
    labels: np.ndarray, classes: dict[str, int], val_fraction: float, seed: int
) -> Split:
    """Patient-level split keeping each class's share: round(n_c * val_fraction) rows of class c,
    at least one, go to validation."""
    if not 0 < val_fraction < 1:
        raise ConfigError(
            f"must be strictly between 0 and 1, got {val_fraction}", option="--val-fraction"
        )
    rng = np.random.default_rng([seed, 0x5917])
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


class BatchDataset(Dataset):
    """Rows of a store, batch by batch, for smri's own training (`smri.StoreDataset` is the
    per-patient Dataset for other loops); the file is opened on first access in each process,
    never across fork.

    Indexed by a list of positions (into `rows`), it returns one batch:
    images (K, M, S, H, W) in the store's dtype and labels (K,) float32.
    """

    def __init__(self, path: Path, rows: np.ndarray, slots: list[torch.Tensor] | None = None):
        self.path = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.slots = slots or []
        self._reader: StoreReader | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reader(self) -> StoreReader:
        """This process's reader, opened on first use."""
        if self._reader is None:
            self._reader = StoreReader(self.path)
        return self._reader

    def __getitem__(
        self, item: tuple[int, list[int]] | list[int] | np.ndarray
    ) -> tuple[torch.Tensor | int, torch.Tensor]:
        """Batch `positions` (or `(k, positions)` from the epoch sampler): images and labels.

        With `slots`, batch k is read into slot ``k % len(slots)`` and its index is returned
        in place of the images (see `Batches`).
        """
        k, positions = item if isinstance(item, tuple) else (None, item)
        rows = self.rows[np.asarray(positions)]
        try:  # in a DataLoader worker, an error returns as a value: one line in the parent
            labels = torch.from_numpy(self.reader.labels[rows].astype(np.float32))
            if self.slots and k is not None:
                slot = k % len(self.slots)
                images = self.slots[slot][: len(rows)]
                self.reader.read_many(rows, out=images.numpy())
                check_finite(images, rows, self.reader)
                return slot, labels
            shape = (len(rows), *self.reader.info.volume_shape)
            images = host_empty(shape, getattr(torch, self.reader.info.dtype))
            self.reader.read_many(rows, out=images.numpy())
            check_finite(images, rows, self.reader)
            return images, labels
        except DataError as exc:
            return exc, None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None  # a handle never travels to another process
        return state

    def close(self) -> None:
        """Close this process's file handle, if open."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def n_batches(n: int, batch_size: int, world: int = 1) -> int:
    """Batches per epoch (per rank) of `epoch_batches`."""
    return math.ceil(math.ceil(n / world) / batch_size)


class _EpochSampler(Sampler):
    """Yields the current epoch's batches as (batch number, positions); set `epoch` first."""

    def __init__(
        self, n: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1
    ):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        batches = epoch_batches(
            self.n, self.batch_size, self.seed, self.epoch, self.shuffle, self.rank, self.world
        )
        for k, b in enumerate(batches):
            yield k, b.tolist()

    def __len__(self) -> int:
        return n_batches(self.n, self.batch_size, self.world)


class Batches:
    """Batches of (images float32 (B, M, S, H, W), labels float32 (B,)) on `device`.

    `cache` is 'device' (whole split resident on the device: an epoch is pure compute), 'ram'
    (resident in host memory, pinned for CUDA) or 'none' (DataLoader workers stream from the
    store). All three yield identical batches for the same seed and epoch.

    With world > 1 this rank gets its `strided_shard` of each epoch's order (torchrun/DDP):
    streaming reads only those patients; a cache holds all `rows`, since the shard changes
    every epoch.
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
    ):
        self.store = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.cache, self.device = cache, device
        self.rank, self.world = rank, world
        self._cuda = device.type == "cuda"
        self._slots: list[torch.Tensor] = []
        self._feeder: _SlotFeeder | None = None
        if cache == "none":
            self._sampler = _EpochSampler(len(self.rows), batch_size, seed, shuffle, rank, world)
            if workers > 0:
                self._slots = batch_slots(path, batch_size, workers * PREFETCH + SLACK)
                if self._cuda:
                    self._feeder = _SlotFeeder(self._slots, device)
            self._loader = DataLoader(
                BatchDataset(path, self.rows, self._slots),
                batch_size=None,
                sampler=self._sampler,
                num_workers=workers,
                pin_memory=False,  # batches are pinned as they leave their slot
                persistent_workers=workers > 0,
                prefetch_factor=PREFETCH if workers > 0 else None,
                generator=torch.Generator(),  # keeps the global RNG untouched (same as caches)
            )
        elif cache in ("ram", "device"):
            target = device if cache == "device" else torch.device("cpu")
            self.images, self.labels = load_rows(path, self.rows, target, pin=self._cuda)
        else:
            raise ValueError(f"cache must be 'device', 'ram' or 'none', got {cache!r}")

    def __len__(self) -> int:
        return n_batches(len(self.rows), self.batch_size, self.world)

    def batch_rows(self, epoch: int, step: int) -> np.ndarray:
        """The store rows of batch `step` of `epoch` (this rank's), as `epoch` yields them."""
        order = epoch_batches(
            len(self.rows), self.batch_size, self.seed, epoch, self.shuffle, self.rank, self.world
        )
        return self.rows[order[step]]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches, on the device, images as float32."""
        if self.cache == "none":
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
                yield self._to_device(images, labels)
            return
        n, size = len(self.rows), self.batch_size
        for pos in epoch_batches(n, size, self.seed, epoch, self.shuffle, self.rank, self.world):
            idx = torch.from_numpy(pos).to(self.images.device)
            labels = self.labels[idx]
            if self.cache == "ram" and not self._cuda:  # gathered straight into float32
                images = host_empty((len(pos), *self.images.shape[1:]), torch.float32)
                for k, row in enumerate(pos.tolist()):
                    images[k].copy_(self.images[row])
            else:
                images = self.images[idx]
                if self.cache == "ram":
                    images, labels = images.pin_memory(), labels.pin_memory()
            yield self._to_device(images, labels)

    def close(self) -> None:
        """Stop streaming workers (if any) and drop cached tensors."""
        if self._feeder is not None:
            self._feeder.close()
            self._feeder = None
        self._loader = None
        self.images = self.labels = None
        self._slots = []

    def _to_device(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True).float()
        return images, labels.to(self.device, non_blocking=True)


class _SlotFeeder:
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


def check_finite(images: torch.Tensor, rows: np.ndarray, reader: StoreReader) -> None:
    """DataError naming the store and the first patient of `images` ``(K, M, S, H, W)``
    (store rows `rows`) that holds NaN or Inf: preprocessing never writes one, so the store is
    damaged, and a single one turns a whole batch's loss into NaN. Costs one min/max pass."""
    lo, hi = torch.aminmax(images)
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    for k, row in enumerate(np.asarray(rows).tolist()):
        bad = int((~torch.isfinite(images[k])).sum())
        if bad:
            raise DataError(nonfinite_message(reader.path, reader.patient_ids[row], bad))


def nonfinite_message(store: Path, patient_id: str, count: int) -> str:
    """What to say of a store patient holding `count` NaN or Inf values."""
    voxels = "voxel" if count == 1 else "voxels"
    return (
        f"{store}: patient {patient_id} holds {count} non-finite {voxels} (NaN or Inf), which "
        "preprocessing never writes: the store is damaged; make it again with `smri preprocess`"
    )


def nonfinite_rows(store: Path, rows: np.ndarray) -> list[tuple[str, int]]:
    """(patient id, count of NaN/Inf values) of the store rows `rows` that hold any."""
    found = []
    with StoreReader(store) as reader:
        for row in np.asarray(rows).tolist():
            images = torch.from_numpy(reader.read(int(row)))
            bad = int((~torch.isfinite(images)).sum())
            if bad:
                found.append((reader.patient_ids[row], bad))
    return found


def nonfinite_output_message(
    store: Path, rows: np.ndarray, ids: Sequence[str], when: str, then: str
) -> str:
    """Why the model's output for store rows `rows` was NaN or Inf (`when`: where it was
    seen): a patient's stored values, named, or (inputs finite) a model that diverged (`then`:
    what was done about it)."""
    found = nonfinite_rows(store, rows)
    if found:
        return nonfinite_message(store, *found[0]) + f" ({when})"
    names = ", ".join(ids[r] for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
    return (
        f"the model's output is not a number (NaN or Inf) for {len(rows)} patient"
        f"{'s' if len(rows) > 1 else ''} ({names}) with finite inputs, {when}: the model "
        f"diverged; {then}"
    )


def batch_slots(path: Path, batch_size: int, n: int) -> list[torch.Tensor]:
    """`n` shared-memory buffers of one batch each, made before the DataLoader workers start.

    Workers read batch k straight into slot ``k % n`` and send only its index. A batch lives
    in fresh shared memory otherwise, and touching fresh memory (about 1 GB/s on small VMs)
    limited streaming more than reading the store. At most ``workers * PREFETCH`` batches are
    in flight, and the loader asks for batch ``k + workers * PREFETCH`` as it hands out batch k,
    so with ``n = workers * PREFETCH + SLACK`` slots, batch k's slot is rewritten once batch
    ``k + SLACK`` is handed out: batch k must have left its slot by then (on the CPU it is copied
    out at once; on CUDA see `_SlotFeeder`).
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


SHARED_MEMORY = Path("/dev/shm")


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


def load_rows(
    path: Path, rows: np.ndarray, device: torch.device, pin: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read `rows` of the store into one tensor on `device` (store dtype) plus float32 labels."""
    with StoreReader(path) as reader:
        shape = (len(rows), *reader.info.volume_shape)
        dtype = getattr(torch, reader.info.dtype)
        images = torch.empty(shape, dtype=dtype, device=device)
        staging = torch.empty((min(LOAD_CHUNK, len(rows)), *shape[1:]), dtype=dtype, pin_memory=pin)
        for start in range(0, len(rows), LOAD_CHUNK):
            chunk = rows[start : start + LOAD_CHUNK]
            buf = staging[: len(chunk)]
            for k, row in enumerate(chunk):
                reader.read(int(row), out=buf[k].numpy())
            check_finite(buf, chunk, reader)
            images[start : start + len(chunk)].copy_(buf, non_blocking=False)
        labels = torch.from_numpy(reader.labels[rows].astype(np.float32)).to(device)
    return images, labels


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
