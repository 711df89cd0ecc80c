"""Training input: patients/s of one epoch of batches from NIfTI vs the store, and each of the
store's hand-written fast paths against the plain path, in one run.

- NIfTI every epoch (no store): what a training script without `smri preprocess` does; each
  patient's files decompressed, normalised and cropped in DataLoader workers by smri's own
  reader (`load_patient`), the strongest such baseline. The target: the store streamed at
  >= 5x this.
- The store streamed (`--cache none`): workers read whole batches straight into a fixed pool
  of shared-memory batch slots and send only the slot's number (`smri.data.slots.batch_slots`); the
  main process copies each batch out into float32 memory that numpy allocated
  (`smri.data.slots.host_empty`: huge pages). Rows turn each off: batches in fresh memory sent
  through torch's queue; torch's own allocation for the float32 copy.
- The plain path: a DataLoader over a Dataset that reads one patient with h5py
  (``images[i]``), default collation, ``.float()``.
- The store in RAM (`--cache ram`), and that without `host_empty`.

Same patients, batch size and worker count; medians of 5 epochs after a warm-up epoch (3 for
NIfTI), over 2 rounds that interleave the rows. Use at least batch size x workers patients (16
on 2 cores), or some workers have no batch to load. This is the input ceiling: training runs at
the lower of this and the model's compute rate (benchmarks/bench_train.py).

Usage: python -m benchmarks.bench_input [PATIENTS] [X Y Z]   (default 16 at 240 240 155)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import BRATS_SHAPE, CORES, cohort, machine, table
from smri.data import Batches, caches, slots, stream
from smri.discovery import discover
from smri.preprocessing import PreprocessConfig, load_patient, run_preprocess

BATCH = 8
ROUNDS = 2


class NiftiDataset(Dataset):
    """The no-store baseline: one patient's NIfTI files -> (M, S, H, W) float16, every epoch."""

    def __init__(self, root: Path, cfg: PreprocessConfig):
        self.patients = discover(root).patients
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        res = load_patient(self.patients[i], self.cfg)
        return torch.from_numpy(res.images), torch.tensor(float(res.label))


class PlainStore(Dataset):
    """The plain path: one patient of the store per item, read with h5py (file opened lazily)."""

    def __init__(self, path: Path):
        self.path = path
        self.file: h5py.File | None = None
        with h5py.File(path) as f:
            self.n = len(f["labels"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        images = torch.from_numpy(self.file["images"][i])
        return images, torch.tensor(float(self.file["labels"][i]))


def epoch_rate(batches: Callable[[int], Iterable[Any]], n: int, repeats: int = 5) -> float:
    """Median patients/s over `repeats` epochs after one warm-up epoch."""
    times = []
    for e in range(repeats + 1):
        t0 = time.perf_counter()
        for images, _labels in batches(e):
            images.float()  # the cast training does (a no-op on float32 batches)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times[1:])


@contextmanager
def without(*paths: str):
    """Turn off smri's batch slots and/or host_empty while the block runs (patched in each
    module that calls them)."""
    plain_empty = lambda shape, dtype: torch.empty(shape, dtype=dtype)  # noqa: E731
    patches = [(stream, "batch_slots", lambda path, batch_size, n: [])] if "slots" in paths else []
    if "host_empty" in paths:
        patches += [(module, "host_empty", plain_empty) for module in (stream, caches, slots)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def store_rate(store: Path, rows: np.ndarray, cache: str, *off: str) -> float:
    with without(*off):
        workers = CORES if cache == "none" else 0
        cpu = torch.device("cpu")
        opts = {"batch_size": BATCH, "seed": 0, "shuffle": True, "device": cpu, "workers": workers}
        batches = Batches(store, rows, cache=cache, **opts)
        try:
            return epoch_rate(batches.epoch, len(rows))
        finally:
            batches.close()


def loader_rate(dataset: Dataset, n: int, repeats: int) -> float:
    opts = {"batch_size": BATCH, "shuffle": True, "persistent_workers": True}
    loader = DataLoader(dataset, num_workers=CORES, **opts)
    return epoch_rate(lambda _e: loader, n, repeats)


def main(argv: list[str]) -> None:
    patients = int(argv[0]) if argv else 16
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else BRATS_SHAPE
    root = cohort(patients, shape)
    cfg = PreprocessConfig()
    if patients < BATCH * CORES:
        print(f"(only {patients} patients: fewer batches of {BATCH} than the {CORES} workers)")
    rows = np.arange(patients)
    names = [
        "NIfTI every epoch (no store)",
        "store streamed (smri: batch slots + host_empty)",
        "store streamed without batch slots",
        "store streamed without host_empty",
        "plain: DataLoader over h5py reads, default collation",
        "store in RAM (smri)",
        "store in RAM without host_empty",
    ]
    got: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        store = Path(tmp) / "input.h5"
        run_preprocess(root, store, cfg, jobs=CORES, progress=False, echo=lambda _: None)
        runs = [
            lambda: loader_rate(NiftiDataset(root, cfg), patients, repeats=3),
            lambda: store_rate(store, rows, "none"),
            lambda: store_rate(store, rows, "none", "slots"),
            lambda: store_rate(store, rows, "none", "host_empty"),
            lambda: loader_rate(PlainStore(store), patients, repeats=5),
            lambda: store_rate(store, rows, "ram"),
            lambda: store_rate(store, rows, "ram", "host_empty"),
        ]
        for _ in range(ROUNDS):
            for name, run in zip(names, runs, strict=True):
                got[name].append(run())
    print(
        f"# Training input: {patients} patients, {'x'.join(map(str, shape))} .nii.gz -> "
        f"(4, 32, {shape[1]}, {shape[0]}) float16, batch {BATCH}, {CORES} workers, "
        f"{ROUNDS} rounds; {machine()}\n"
    )

    def ratio(a: str, b: str) -> float:  # median over rounds of a/b within a round
        return statistics.median(x / y for x, y in zip(got[a], got[b], strict=True))

    nifti, smri_row = names[0], names[1]
    out = []
    for name in names:
        span = f"{min(got[name]):.3g}-{max(got[name]):.3g}"
        out.append(
            (name, statistics.median(got[name]), span, ratio(name, nifti), ratio(name, smri_row))
        )
    print(table(("input", "patients/s", "range", "vs NIfTI every epoch", "vs smri streamed"), out))
    print("\n**Each kept fast path against the input without it (same rounds):**\n")
    gains = [
        ("batch slots (streamed)", f"{ratio(smri_row, names[2]):.2f}x"),
        ("host_empty (streamed)", f"{ratio(smri_row, names[3]):.2f}x"),
        ("host_empty (RAM cache)", f"{ratio(names[5], names[6]):.2f}x"),
        ("both, streamed (vs the plain path)", f"{ratio(smri_row, names[4]):.2f}x"),
    ]
    print(table(("fast path", "patients/s gain"), gains))


if __name__ == "__main__":
    main(sys.argv[1:])
