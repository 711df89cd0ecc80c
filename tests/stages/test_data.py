"""Splits, batches and the store Dataset: stratified, patient-level, identical across caches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from smri.data import (
    BatchDataset,
    Batches,
    epoch_batches,
    random_flips,
    resolve_cache,
    stratified_folds,
    stratified_split,
)
from smri.errors import ConfigError, DataError
from smri.store import StoreReader
from tests.helpers.stores import make_store
from tests.helpers.training import (  # noqa: F401 (autouse fixture)
    assert_same_batches,
    one_torch_thread,
)

CLASSES = {"LGG": 0, "HGG": 1}
CPU = torch.device("cpu")


STORE_LABELS = [0, 1, 1] * 5 + [-1]  # the patients of conftest's `store`


def test_split_is_patient_level_stratified_and_seeded():
    labels = np.array([0] * 10 + [1] * 20 + [-1] * 3)
    split = stratified_split(labels, CLASSES, 0.2, seed=1)
    assert set(split.train).isdisjoint(split.val)
    assert sorted([*split.train, *split.val]) == list(range(30))  # unlabelled rows left out
    assert (labels[split.val] == 0).sum() == 2 and (labels[split.val] == 1).sum() == 4
    again = stratified_split(labels, CLASSES, 0.2, seed=1)
    assert np.array_equal(split.val, again.val)
    assert not np.array_equal(split.val, stratified_split(labels, CLASSES, 0.2, seed=2).val)


def test_split_keeps_at_least_one_patient_of_each_class_on_each_side():
    split = stratified_split(np.array([0, 0, 1, 1, 1, 1, 1, 1]), CLASSES, 0.1, seed=0)
    assert len(split.val) == 2 and len(split.train) == 6


def test_one_class_only_is_an_error():
    with pytest.raises(DataError, match="both classes; the store has LGG=0, HGG=5"):
        stratified_split(np.ones(5, dtype=np.int8), CLASSES, 0.2, seed=0)


def test_bad_val_fraction_names_the_option():
    with pytest.raises(ConfigError, match=r"between 0 and 1, got 1\.5") as exc:
        stratified_split(np.array([0, 1, 0, 1]), CLASSES, 1.5, seed=0)
    assert exc.value.option == "--val-fraction"


def test_folds_validate_every_patient_exactly_once():
    labels = np.array([0] * 7 + [1] * 11 + [-1])
    folds = stratified_folds(labels, CLASSES, 3, seed=0)
    vals = np.concatenate([f.val for f in folds])
    assert sorted(vals) == list(range(18))
    for f in folds:
        assert set(f.train).isdisjoint(f.val)
        assert len(f.train) + len(f.val) == 18
    assert [len(f.val) for f in folds] == [6, 6, 6]
    assert sorted(int((labels[f.val] == 0).sum()) for f in folds) == [2, 2, 3]


def test_more_folds_than_patients_of_a_class_is_an_error():
    with pytest.raises(ConfigError, match="5 folds need at least 5 patients of every class; "
                       "class LGG has 3"):  # fmt: skip
        stratified_folds(np.array([0, 0, 0, 1, 1, 1, 1, 1]), CLASSES, 5, seed=0)


def test_epoch_batches_cover_positions_once_and_depend_on_seed_and_epoch():
    b = epoch_batches(10, 4, seed=3, epoch=1)
    assert [len(x) for x in b] == [4, 4, 2]
    assert sorted(np.concatenate(b)) == list(range(10))
    assert all(np.array_equal(x, y) for x, y in zip(b, epoch_batches(10, 4, 3, 1), strict=True))
    assert not np.array_equal(np.concatenate(b), np.concatenate(epoch_batches(10, 4, 3, 2)))
    assert np.array_equal(np.concatenate(epoch_batches(5, 2, 3, 1, shuffle=False)), np.arange(5))


def test_dataset_opens_the_file_lazily_and_never_pickles_a_handle(store):
    ds = BatchDataset(store, np.array([2, 5, 7]))
    assert ds._reader is None
    images, labels = ds[[2, 0]]
    with StoreReader(store) as r:
        assert np.array_equal(images.numpy(), r.read_many([7, 2]))
        assert labels.tolist() == r.labels[[7, 2]].astype(float).tolist()
    assert images.dtype == torch.float16 and labels.dtype == torch.float32
    assert ds._reader is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader is None and np.array_equal(clone.rows, ds.rows)
    ds.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_and_ram_cache_give_identical_batches(store, workers):
    rows = np.arange(12)
    kw = {"batch_size": 5, "seed": 7, "shuffle": True, "device": CPU}
    ram = Batches(store, rows, cache="ram", **kw)
    stream = Batches(store, rows, cache="none", workers=workers, **kw)
    assert_same_batches(ram, stream, epochs=(1, 2), sizes=[5, 5, 2])
    assert stream.source._loader.dataset._reader is None or workers == 0  # workers opened their own
    ram.close()
    stream.close()


def test_cached_batches_follow_epoch_batches(store):
    batches = Batches(store, np.array([1, 3, 4, 6]), batch_size=3, seed=0, shuffle=True,
                      cache="ram", device=CPU)  # fmt: skip
    order = np.concatenate(epoch_batches(4, 3, 0, 5))
    got = torch.cat([y for _, y in batches.epoch(5)])
    with StoreReader(store) as r:
        assert got.tolist() == r.labels[np.array([1, 3, 4, 6])[order]].astype(float).tolist()


def test_random_flips_are_seeded_and_flip_all_modalities_together():
    x = torch.arange(2 * 3 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2, 2)
    a, b = random_flips(x, 0, 1, 0), random_flips(x, 0, 1, 0)
    assert torch.equal(a, b)
    flags = np.random.default_rng([0, 1, 0, 0xF119]).random((2, 3)) < 0.5
    for i in range(2):
        dims = [2 + k for k in range(3) if flags[i, k]]
        expected = x[i : i + 1].flip(dims) if dims else x[i : i + 1]
        assert torch.equal(a[i : i + 1], expected)


def test_cache_resolution_on_cpu():
    assert resolve_cache("auto", CPU, 1024) == "ram"
    assert resolve_cache("auto", CPU, 2**62) == "none"
    assert resolve_cache("device", CPU, 1024) == "ram"
    assert resolve_cache("none", CPU, 1024) == "none"
    with pytest.raises(ConfigError, match="must be one of auto, device, ram, none, got 'gpu'"):
        resolve_cache("gpu", CPU, 1)


REUSE_SCRIPT = """
import resource, sys
import numpy as np, torch
from smri.data import Batches
b = Batches(sys.argv[1], np.arange(16), batch_size=8, seed=0, shuffle=True, cache=sys.argv[2],
            device=torch.device("cpu"), workers=int(sys.argv[3]))
faults = []
for epoch in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for images, labels in b.epoch(epoch):
        assert images.dtype == torch.float32
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
b.close()
print(sorted(faults[4:])[3])  # the steady state: a one-off epoch (the heap grows) is not it
"""


def _huge_pages_on_request() -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks (madvise) for them."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _huge_pages_on_request(), reason="no transparent huge pages here")
@pytest.mark.parametrize(("cache", "workers"), [("none", 0), ("none", 2), ("ram", 0)])
def test_cpu_batches_fault_in_few_pages_epoch_after_epoch(tmp_path, cache, workers):
    """Batch-sized CPU tensors come from numpy (`smri.data.slots.host_empty`), which asks for huge
    pages: each 37 MB float32 batch here faults in 40-1,100 pages epoch after epoch, where
    torch's own allocation faulted in 18,000-23,000 (4 KiB pages, fresh for every batch). The
    fourth of epochs 4-9 is compared: one epoch in them can fault in ~8,400 pages when the
    heap happens to grow there (it moves with the modules imported), not a batch's doing."""
    import subprocess
    import sys

    store = make_store(tmp_path / "big.h5", shape=(4, 32, 96, 96))
    out = subprocess.run(
        [sys.executable, "-c", REUSE_SCRIPT, str(store), cache, str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    typical = int(out.stdout.strip())
    assert typical < 5000, f"{typical} page faults in a typical epoch after warm-up"
