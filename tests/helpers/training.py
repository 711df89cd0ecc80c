"""Tiny learnable stores for the data/train/CLI tests (class 1 patients carry a bright blob)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from smri.store import StoreWriter

SHAPE = (4, 16, 32, 32)  # (M, S, H, W): the smallest volume the four poolings accept
CONFIG = {
    "modalities": ["flair", "t1", "t1ce", "t2"],
    "slices": 16,
    "dtype": "float16",
    "compression": "none",
    "canonical": False,
    "classes": {"LGG": 0, "HGG": 1},
}


def make_store(
    path: Path,
    labels: list[int] | None = None,
    shape: tuple[int, int, int, int] = SHAPE,
    seed: int = 0,
    modalities: tuple[str, ...] = ("flair", "t1", "t1ce", "t2"),
    masks: bool = False,
) -> Path:
    """A store of noise volumes; class-1 patients get a bright cube, so the task is learnable.

    With `masks`, every patient has a mask: the cube (label 1) for class 1, none for class 0.
    """
    labels = [0, 1] * 8 if labels is None else labels
    rng = np.random.default_rng(seed)
    _, s, h, w = shape
    with StoreWriter(
        path,
        n_patients=len(labels),
        volume_shape=shape,
        dtype="float16",
        compression=None,
        modalities=modalities,
        classes={"LGG": 0, "HGG": 1},
        config={**CONFIG, "modalities": list(modalities), "slices": s},
    ) as writer:
        for i, label in enumerate(labels):
            images = rng.random(shape, dtype=np.float32) * 0.5
            mask = np.zeros(shape[1:], dtype=np.uint8)
            if label == 1:
                z, y, x = rng.integers(0, [s - 6, h - 10, w - 10])
                images[:, z : z + 6, y : y + 10, x : x + 10] += 0.5
                mask[z : z + 6, y : y + 10, x : x + 10] = 1
            n = int(mask.sum())
            meta = {"has_mask": True, "tumour_voxels": n, "tumour_voxels_in_slab": n}
            writer.write(i, images=images, label=label, patient_id=f"P{i:03d}",
                         meta=meta if masks else None, mask=mask if masks else None)  # fmt: skip
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quiet(*_args: object) -> None:
    """Swallow log lines."""


def metric_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_batches(x, y, epochs, sizes: list[int]) -> None:
    """Two `Batches` give equal float32 batches (images and labels) of `sizes`, on one device."""
    for epoch in epochs:
        a, b = list(x.epoch(epoch)), list(y.epoch(epoch))
        assert [len(labels) for _, labels in a] == sizes
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.device.type == xb.device.type == x.device.type
            assert xa.dtype == xb.dtype == torch.float32
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def tiny_run(folder: Path) -> tuple[Path, Path]:
    """A 12-patient store in `folder` and a one-epoch quarter-width run trained on it."""
    from smri.models import ModelConfig
    from smri.training import TrainConfig, train

    store = make_store(folder / "s.h5", labels=[0, 1] * 6)
    run = folder / "run"
    train(store, ModelConfig(width=0.25), TrainConfig(epochs=1, batch_size=4, cache="ram"), run,
          log=quiet)  # fmt: skip
    return store, run
