"""A reader while `smri preprocess --append` (or `--overwrite`) replaces the store.

The appender writes a new file and renames it over the old one. A reader that opens the path
again later (a DataLoader worker, a cache, the next fold) would read the new file's rows under
the old plan: other patients at the same row numbers. Every reopening checks that the file is
still the one the rows were planned on (`StoreInfo.identity`) and stops with one line; the
check is made once per opening, never per read.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import smri
import smri.store.reader as store_reader
from smri.data import Batches
from smri.errors import DataError
from smri.networks import ModelConfig
from smri.store import StoreChanged, StoreReader
from smri.training import TrainConfig, train
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

SHAPE = (1, 16, 32, 32)
ONE = ("flair",)
REPLACED = "the store was replaced after this command planned on it"


@pytest.fixture
def stores(tmp_path) -> tuple[Path, Path]:
    """A store, and another with two patients more (what `--append` makes of it)."""
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 4, shape=SHAPE, seed=1, modalities=ONE)
    bigger = make_store(tmp_path / "bigger.h5", labels=[0, 1] * 5, shape=SHAPE, seed=2,
                        modalities=ONE)  # fmt: skip
    return store, bigger


def replace(store: Path, new: Path) -> None:
    """What --append does at its end: a complete new file renamed over the old one."""
    tmp = store.with_name(".s.h5.partial")
    shutil.copy(new, tmp)
    os.replace(tmp, store)


def test_a_reader_expecting_the_planned_file_refuses_its_replacement(stores):
    store, bigger = stores
    with StoreReader(store) as reader:
        planned = reader.info.identity
    with StoreReader(store, expect=planned):  # the same file: read as before
        pass
    replace(store, bigger)
    with pytest.raises(StoreChanged, match=f"{store}: {REPLACED}"):
        StoreReader(store, expect=planned)


def test_the_dataset_and_its_workers_stop_instead_of_reading_other_patients(stores):
    store, bigger = stores
    ds = smri.StoreDataset(store)
    worker_copy = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets
    replace(store, bigger)
    with pytest.raises(DataError, match=REPLACED):
        ds[0]  # opened lazily, in this process, after the replacement
    with pytest.raises(DataError, match=REPLACED):
        worker_copy[3]


@pytest.mark.parametrize(("cache", "workers"), [("ram", 0), ("none", 0), ("none", 1)])
def test_batches_planned_on_one_store_never_read_another(stores, cache, workers):
    store, bigger = stores
    with StoreReader(store) as reader:
        planned = reader.info.identity
    replace(store, bigger)
    with pytest.raises(DataError, match=REPLACED):
        batches = Batches(store, np.arange(8), batch_size=4, seed=0, shuffle=False,
                          cache=cache, device=torch.device("cpu"), workers=workers,
                          identity=planned)  # fmt: skip
        try:
            next(iter(batches.epoch(0)))
        finally:
            batches.close()


def test_the_next_fold_stops_when_the_store_was_replaced_after_the_split(stores, tmp_path):
    """The folds are split once; fold 1 opens the store again after fold 0 has trained."""
    store, bigger = stores

    def log(line: str) -> None:
        if line.startswith("fold 1/2"):
            replace(store, bigger)

    with pytest.raises(DataError, match=REPLACED):
        train(store, ModelConfig(width=0.25), TrainConfig(epochs=1, batch_size=2, folds=2,
              cache="none", workers=0, device="cpu", augment=False), tmp_path / "run",
              log=log)  # fmt: skip
    assert (tmp_path / "run" / "fold0" / "summary.json").exists()  # what fold 0 did is kept
    assert not (tmp_path / "run" / "fold1" / "best.pt").exists()


def test_the_check_is_made_once_per_opening_not_per_read(stores, monkeypatch):
    store, _ = stores
    calls = []
    identity_of = store_reader.identity_of
    monkeypatch.setattr(store_reader, "identity_of", lambda f: calls.append(1) or identity_of(f))
    ds = smri.StoreDataset(store)
    assert len(calls) == 1
    for i in range(len(ds)):
        ds[i]
    assert len(calls) == 2  # the lazy opening; no read checks again
    ds.close()


def test_a_store_rewritten_in_place_counts_as_replaced(stores):
    store, _ = stores
    ds = smri.StoreDataset(store)
    st = store.stat()
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataError, match=REPLACED):
        ds[0]
