"""smri.StoreDataset: one patient per item, float32 (M, S, H, W), split sides of a run, lazy
per-process file handles (DataLoader workers, pickling), transforms (MONAI/TorchIO if present)."""

from __future__ import annotations

import importlib.util
import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from smri import StoreDataset
from smri.errors import ConfigError, DataError
from smri.store import StoreReader
from tests.helpers.stores import SHAPE
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

LABELS = [0, 1, 1, 0, 1, -1, 0, 1]


STORE_LABELS = LABELS  # the patients of conftest's `store`


@pytest.fixture(scope="module")
def stored(store):
    with StoreReader(store) as reader:
        return reader.read_many(range(len(LABELS))).astype(np.float32)


@pytest.fixture
def run(tmp_path):
    """A run folder's split.json (patient ids of each side)."""
    (tmp_path / "split.json").write_text(json.dumps({"train": ["P000", "P002", "P004", "P007"],
                                                     "val": ["P003", "P001"]}))  # fmt: skip
    return tmp_path


def test_items_are_float32_patients_and_int_labels(store, stored):
    ds = StoreDataset(store)
    assert len(ds) == len(LABELS) and ds.patient_ids[0] == "P000"
    images, label = ds[1]
    assert images.dtype == torch.float32 and tuple(images.shape) == SHAPE
    assert torch.equal(images, torch.from_numpy(stored[1])) and label == 1 and type(label) is int
    assert ds[5][1] == -1  # unlabelled
    assert ds[-1][1] == LABELS[-1]
    with pytest.raises(IndexError):
        ds[len(LABELS)]
    assert StoreDataset(store, dtype=torch.float16)[0][0].dtype == torch.float16
    assert repr(ds) == f"StoreDataset({str(store)!r}, 8 patients, images 4x16x32x32)"


def test_rows_by_number_or_patient_id(store, stored):
    ds = StoreDataset(store, [6, "P002"])
    assert ds.patient_ids == ["P006", "P002"] and ds.labels.tolist() == [0, 1]
    assert torch.equal(ds[1][0], torch.from_numpy(stored[2]))
    with pytest.raises(DataError, match="no patient 'P999' in the store"):
        StoreDataset(store, ["P999"])
    with pytest.raises(ConfigError, match=r"row numbers in 0\.\.7 or patient ids, got 8"):
        StoreDataset(store, [8])


def test_split_sides_of_a_run(store, run):
    train, val = StoreDataset(store, "train", run=run), StoreDataset(store, "val", run=run)
    assert train.patient_ids == ["P000", "P002", "P004", "P007"]
    assert val.patient_ids == ["P001", "P003"]  # store order
    with pytest.raises(ConfigError, match=r"rows='val' needs run=RUN_DIR"):
        StoreDataset(store, "val")
    with pytest.raises(ConfigError, match=r"expected 'train', 'val', None or a sequence"):
        StoreDataset(store, "test", run=run)
    (run / "split.json").write_text(json.dumps([{"train": [], "val": []}] * 3))
    with pytest.raises(ConfigError, match=r"is a 3-fold run: give one fold's folder, e\.g\."):
        StoreDataset(store, "train", run=run)
    (run / "split.json").write_text(json.dumps({"train": ["X1"], "val": []}))
    with pytest.raises(DataError, match=r"1 train patient is not in .*first: X1"):
        StoreDataset(store, "train", run=run)


def test_no_handle_is_open_after_init_or_in_a_pickle(store):
    ds = StoreDataset(store)
    assert ds._reader is None
    ds[0]
    assert ds._reader is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._reader is None and torch.equal(copy[3][0], ds[3][0])
    ds.close()
    assert ds._reader is None


def test_a_plain_dataloader_with_two_workers(store, stored):
    ds = StoreDataset(store, transform=lambda x: x * 2)
    ds[0]  # a handle opened in the parent before the workers fork: they must open their own
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(images, torch.from_numpy(stored) * 2)
    assert labels.tolist() == LABELS


@pytest.mark.skipif(not importlib.util.find_spec("monai"), reason="MONAI is not installed")
def test_monai_transforms(store, stored):
    from monai.transforms import Compose, RandFlip, ScaleIntensity

    ds = StoreDataset(store, transform=Compose([RandFlip(prob=1.0, spatial_axis=0),
                                                ScaleIntensity()]))  # fmt: skip
    images, _ = ds[0]
    assert tuple(images.shape) == SHAPE
    flipped = torch.from_numpy(stored[0]).flip(1)
    assert torch.allclose(torch.as_tensor(images), (flipped - flipped.min()) /
                          (flipped.max() - flipped.min()), atol=1e-6)  # fmt: skip


@pytest.mark.skipif(not importlib.util.find_spec("torchio"), reason="TorchIO is not installed")
def test_torchio_transforms(store, stored):
    import torchio as tio

    images, _ = StoreDataset(store, transform=tio.Flip(axes=(0,)))[0]
    assert torch.equal(images, torch.from_numpy(stored[0]).flip(1))

    def subject(x):
        return tio.Flip(axes=(2,))(tio.Subject(mri=tio.ScalarImage(tensor=x)))["mri"].data

    images, _ = StoreDataset(store, transform=subject)[0]
    assert torch.equal(images, torch.from_numpy(stored[0]).flip(3))
