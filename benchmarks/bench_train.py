"""Training throughput: patients/s of one train epoch per model x cache mode (x precision on CUDA).

Builds a store of random volumes at the given geometry with the real `StoreWriter` (training
speed does not depend on the pixel values), then times `train_one_epoch` after one warm-up
epoch, median of 3 epochs. On CUDA each model is timed fp32 and bf16 + channels_last_3d, with
the whole store on the GPU (`device`) and streamed by DataLoader workers (`none`); ratios are
within this run. Anchors (DESIGN.md, H200): CNN2 fp32 / bf16 47 / 117 patients/s on
device-resident data; streamed vs device 70 vs 111.

Usage: python -m benchmarks.bench_train [PATIENTS] [S H W]   (default 64 at 32 240 240;
on CPU use e.g. 16 16 64 64)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import CORES, machine, table
from smri.data import Batches
from smri.models import MODEL_NAMES, ModelConfig, build_model
from smri.store import StoreWriter
from smri.train import train_one_epoch


def make_store(path: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """n patients of random float16 volumes, alternating labels."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, n_patients=n, volume_shape=(4, *shape), dtype="float16",
                     compression=None, modalities=("flair", "t1", "t1ce", "t2"),
                     classes={"LGG": 0, "HGG": 1}, config={}) as w:  # fmt: skip
        vol = rng.random((4, *shape), dtype=np.float32)
        for i in range(n):
            w.write(i, images=np.roll(vol, i, axis=-1), label=i % 2, patient_id=f"P{i:04d}")
    return path


def rate(
    store: Path,
    n: int,
    shape: tuple[int, ...],
    name: str,
    cache: str,
    amp: bool,
    device: torch.device,
) -> float:
    """Median training patients/s over 3 epochs after one warm-up epoch."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, volume_shape=shape))
    fmt = torch.channels_last_3d if amp and device.type == "cuda" else torch.preserve_format
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = torch.nn.BCEWithLogitsLoss()
    batches = Batches(store, np.arange(n), batch_size=8, seed=0, shuffle=True, cache=cache,
                      device=device, workers=min(8, CORES))  # fmt: skip
    rates = [
        train_one_epoch(model, batches, opt, loss, e, amp=amp, augment=False, seed=0)[
            "patients_per_s"
        ]
        for e in range(4)
    ][1:]
    batches.close()
    return statistics.median(rates)


def main() -> None:
    """Print the table."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    shape = tuple(int(s) for s in sys.argv[2:5]) if len(sys.argv) > 4 else (32, 240, 240)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    caches = ("device", "none") if device.type == "cuda" else ("ram", "none")
    precisions = (False, True) if device.type == "cuda" else (False,)
    name_of = torch.cuda.get_device_name() if device.type == "cuda" else machine()
    print(f"{name_of}; {n} patients of 4x{'x'.join(map(str, shape))} float16; batch 8")
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "bench.h5", n, shape)
        rows = []
        for name in MODEL_NAMES:
            for amp in precisions:
                r = {c: rate(store, n, shape, name, c, amp, device) for c in caches}
                prec = "bf16+channels_last" if amp else "fp32"
                rows.append([name, prec, *r.values(), r[caches[1]] / r[caches[0]]])
                print(f"{name} {prec}: " + ", ".join(f"{c} {v:.1f}" for c, v in r.items()))
    print()
    print(table(["model", "precision", *(f"{c} patients/s" for c in caches), "ratio"], rows))


if __name__ == "__main__":
    main()
