"""Training input: patients/s of one epoch of batches from NIfTI vs the store vs a RAM cache.

The no-store baseline decompresses, normalises and crops every patient's NIfTI files every
epoch (what a training script without `smri preprocess` does), in DataLoader workers, with
smri's own streamed reader: the strongest baseline there is here. The store
path is smri's streaming input (`--cache none`): workers open the store lazily and read whole
batches. The cache path (`--cache ram`; `device` on a GPU) serves batches from memory. Same
patients, batch size and worker count; medians of 5 epochs after a warm-up epoch. Use at least
batch size x workers patients (16 on 2 cores), or some workers have no batch to load. This is the
input ceiling: training runs at the lower of this and the model's compute rate
(benchmarks/bench_train.py).

Usage: python -m benchmarks.bench_input [PATIENTS] [X Y Z]   (default 16 at 240 240 155)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import BRATS_SHAPE, CORES, cohort, machine, table
from smri.data import Batches
from smri.discovery import discover
from smri.preprocessing import PreprocessConfig, load_patient, run_preprocess

BATCH = 8


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


def epoch_rate(batches, n: int, repeats: int = 5) -> float:
    """Median patients/s over `repeats` epochs after one warm-up epoch."""
    times = []
    for e in range(repeats + 1):
        t0 = time.perf_counter()
        for images, _labels in batches(e):
            images.float()  # the cast training does
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times[1:])


def main(argv: list[str]) -> None:
    patients = int(argv[0]) if argv else 16
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else BRATS_SHAPE
    root = cohort(patients, shape)
    cfg = PreprocessConfig()
    cpu = torch.device("cpu")
    workers = CORES
    if patients < BATCH * workers:
        print(f"(only {patients} patients: fewer batches of {BATCH} than the {workers} workers)")
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        store = Path(tmp) / "input.h5"
        run_preprocess(root, store, cfg, jobs=CORES, progress=False, echo=lambda _: None)
        rows = np.arange(patients)
        loader = DataLoader(
            NiftiDataset(root, cfg),
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            persistent_workers=True,
        )
        nifti = epoch_rate(lambda _e: loader, patients)
        streamed = Batches(
            store,
            rows,
            batch_size=BATCH,
            seed=0,
            shuffle=True,
            cache="none",
            device=cpu,
            workers=workers,
        )
        store_rate = epoch_rate(streamed.epoch, patients)
        cached = Batches(
            store, rows, batch_size=BATCH, seed=0, shuffle=True, cache="ram", device=cpu
        )
        ram_rate = epoch_rate(cached.epoch, patients)
        streamed.close()
    print(
        f"# Training input: {patients} patients, {'x'.join(map(str, shape))} .nii.gz -> "
        f"(4, 32, {shape[1]}, {shape[0]}) float16, batch {BATCH}, {workers} workers; "
        f"{machine()}\n"
    )
    print(
        table(
            ("input", "patients/s", "vs NIfTI every epoch"),
            [
                ("NIfTI every epoch (no store)", nifti, 1.0),
                ("store, streamed (--cache none)", store_rate, store_rate / nifti),
                ("store in RAM (--cache ram)", ram_rate, ram_rate / nifti),
            ],
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
