"""Non-finite values never become a result.

A NaN or Inf in a stored patient stops train and evaluate with one line naming the store and
the patient, whatever the cache mode (a streaming DataLoader worker included); a loss or model
output that becomes NaN with finite inputs stops training at that epoch and batch before it is
saved; weights holding NaN are refused; and no metric counts NaN as a class. Printed and
written JSON holds null where a metric cannot be computed, never NaN.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from smri.data import Batches
from smri.networks import ModelConfig
from smri.training import NonFiniteOutput, TrainConfig, evaluate, train
from tests.helpers.cli import error_line, invoke
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

TRAIN = ["--model", "cnn2", "--width", "0.25", "--batch-size", "4", "--epochs", "2",
         "--device", "cpu", "--no-tensorboard"]  # fmt: skip
CACHES = [["--cache", "ram"], ["--cache", "none", "--workers", "2"], ["--cache", "none",
          "--workers", "0"]]  # fmt: skip
CACHE_IDS = ["ram", "stream-2-workers", "stream-in-process"]


STORE_LABELS = [0, 1] * 6  # the patients of conftest's `store`


@pytest.fixture(scope="module")
def clean(store: Path) -> Path:
    """conftest's `store`: every value finite (the tests poison copies of it)."""
    return store


@pytest.fixture(scope="module")
def run(clean, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nonfinite-run") / "run"
    train(clean, ModelConfig(width=0.25), TrainConfig(epochs=1, batch_size=4, cache="ram"), out,
          log=lambda _: None)  # fmt: skip
    return out


def poisoned(clean: Path, folder: Path, row: int, value: float = np.nan, count: int = 1) -> Path:
    """A copy of the store whose patient `row` holds `count` voxels of `value`."""
    path = shutil.copy(clean, folder / f"poisoned-{row}.h5")
    with h5py.File(path, "r+") as f:
        images = f["images"][row]
        images.reshape(-1)[:count] = value
        f["images"][row] = images
    return Path(path)


def _split_sides(store: Path) -> tuple[list[int], list[int]]:
    from smri.data import stratified_split
    from smri.store import StoreReader

    with StoreReader(store) as r:
        split = stratified_split(r.labels, r.info.classes, 0.2, 0)
    return split.train.tolist(), split.val.tolist()


@pytest.mark.parametrize("cache", CACHES, ids=CACHE_IDS)
@pytest.mark.parametrize("side", ["val", "train"])
def test_a_nan_patient_stops_training_with_its_name(clean, tmp_path, cache, side):
    train_rows, val_rows = _split_sides(clean)
    row = (val_rows if side == "val" else train_rows)[0]
    store = poisoned(clean, tmp_path, row)
    res = invoke("train", store, *TRAIN, *cache, "--out", tmp_path / "run")
    assert error_line(res).startswith(
        f"Error: {store}: patient P{row:03d} holds 1 non-finite voxel (NaN or Inf), which "
        "preprocessing never writes: the store is damaged"
    )
    assert not (tmp_path / "run" / "best.pt").exists()  # nothing trained on it was kept
    assert "*best" not in res.stderr


def test_inf_values_count_as_well(clean, tmp_path):
    store = poisoned(clean, tmp_path, _split_sides(clean)[1][0], value=-np.inf, count=3)
    res = invoke("train", store, *TRAIN, "--cache", "ram", "--out", tmp_path / "run")
    assert "holds 3 non-finite voxels (NaN or Inf)" in error_line(res)


def test_a_loss_that_diverges_stops_at_its_epoch_and_batch(clean, tmp_path):
    res = invoke("train", clean, *TRAIN, "--cache", "ram", "--lr", "1e30", "--no-amp",
                 "--out", tmp_path / "run")  # fmt: skip
    line = error_line(res)
    assert line.startswith("Error: training diverged: the loss became NaN or Inf at epoch 1, "
                           "batch ") or "the model diverged" in line  # fmt: skip
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("cache", CACHES, ids=CACHE_IDS)
def test_evaluate_names_the_nan_patient_and_writes_nothing(run, clean, tmp_path, cache):
    store = poisoned(clean, tmp_path, 5)
    res = invoke("evaluate", run / "best.pt", store, "--device", "cpu", *cache,
                 "--out", tmp_path / "ev")  # fmt: skip
    assert error_line(res).startswith(f"Error: {store}: patient P005 holds 1 non-finite voxel")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_weights_holding_nan_are_refused_everywhere(run, clean, tmp_path):
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["model"]["fc.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    for args in (["evaluate", bad, clean, "--out", tmp_path / "ev"],
                 ["predict", bad, tmp_path, "--device", "cpu"]):  # fmt: skip
        line = error_line(invoke(*args))
        assert line == (
            f"Error: {bad}: the weights hold non-finite values (1 NaN or Inf in fc.weight): the "
            "run that saved them diverged; use an earlier checkpoint"
        )
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    last = torch.load(resumed / "last.pt", weights_only=True)
    last["model"]["fc.bias"][0] = float("inf")
    torch.save(last, resumed / "last.pt")
    assert "the weights hold non-finite values" in error_line(invoke("train", "--resume", resumed))


class _NanFor(nn.Module):
    """A model whose output for the patients at `rows` of a batch is NaN."""

    def __init__(self, positions: set[int]):
        super().__init__()
        self.positions, self.seen = positions, 0
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.mean(dim=(1, 2, 3, 4)) + self.w
        for k in range(len(out)):
            if self.seen + k in self.positions:
                out[k] = float("nan")
        self.seen += len(out)
        return out


def test_evaluate_never_counts_a_nan_output_as_a_class(clean):
    batches = Batches(clean, np.arange(12), batch_size=4, seed=0, shuffle=False, cache="ram",
                      device=torch.device("cpu"))  # fmt: skip
    with pytest.raises(NonFiniteOutput) as info:
        evaluate(_NanFor({6}), batches, nn.BCEWithLogitsLoss(), amp=False)
    assert info.value.positions.tolist() == [6]


def test_json_output_holds_null_where_a_metric_cannot_be_computed(run, tmp_path):
    one_class = make_store(tmp_path / "one.h5", labels=[1] * 4)
    res = invoke("evaluate", run / "best.pt", one_class, "--device", "cpu",
                 "--out", tmp_path / "ev")  # fmt: skip
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)  # strict JSON: NaN would not parse as a number here
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert printed["auc"] is None and written["auc"] is None
    assert "NaN" not in res.stdout and "NaN" not in (tmp_path / "ev" / "metrics.json").read_text()
