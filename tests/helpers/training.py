"""Training helpers: one torch thread per test module, quiet logs, metrics rows, equal batches, and
a one-epoch run on a tiny store."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import quiet
from tests.helpers.stores import make_store


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    from smri.networks import ModelConfig
    from smri.training import TrainConfig, train

    store = make_store(folder / "s.h5", labels=[0, 1] * 6)
    run = folder / "run"
    train(store, ModelConfig(width=0.25), TrainConfig(epochs=1, batch_size=4, cache="ram"), run,
          log=quiet)  # fmt: skip
    return store, run
