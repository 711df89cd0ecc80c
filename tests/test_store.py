"""store.py: schema round trip, atomic writes, and clear refusals of anything else."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from smri import store
from smri.errors import DataError
from smri.store import StoreReader, StoreWriter, read_info

SHAPE = (2, 4, 6, 5)


def write_small(path, n=3, **kwargs):
    rng = np.random.default_rng(0)
    arrays = rng.random((n, *SHAPE), dtype=np.float32)
    opts = dict(
        dtype="float16",
        modalities=("t1", "t2"),
        classes={"LGG": 0, "HGG": 1},
        config={"slices": 4},
    )
    with plain_writer(path, n, **{**opts, **kwargs}) as w:
        for i in range(n):
            w.write(
                i,
                images=arrays[i],
                label=i % 2,
                patient_id=f"p{i}",
                meta={"intensity_min": [0.0, 1.0], "source_files": ["a", "b"]},
            )
        w.set_skipped([{"patient_id": "bad", "reason": "broken"}])
    return arrays


def plain_writer(path, n, **kwargs):
    """A writer of `n` rows: float32, two modalities, no compression, unless `kwargs` say."""
    opts = dict(
        volume_shape=SHAPE,
        dtype="float32",
        compression=None,
        modalities=("a", "b"),
        classes={"x": 0, "y": 1},
        config={},
    )
    return StoreWriter(path, n_patients=n, **{**opts, **kwargs})


def test_round_trip(tmp_path):
    path = tmp_path / "s.h5"
    arrays = write_small(path)
    with StoreReader(path) as r:
        assert r.patient_ids == ["p0", "p1", "p2"]
        assert r.labels.tolist() == [0, 1, 0]
        assert r.info.volume_shape == SHAPE
        assert r.info.modalities == ("t1", "t2")
        assert r.info.class_counts == {"LGG": 2, "HGG": 1}
        assert r.info.skipped == [{"patient_id": "bad", "reason": "broken"}]
        assert r.info.config == {"slices": 4}
        np.testing.assert_array_equal(r.read(1), arrays[1].astype(np.float16))
        np.testing.assert_array_equal(r.read_many([2, 0]), arrays[[2, 0]].astype(np.float16))
        assert r.meta(1)["source_files"] == ["a", "b"]
        assert r.index_of("p2") == 2
        with pytest.raises(DataError, match="no patient 'zz' in the store"):
            r.index_of("zz")
    with h5py.File(path) as f:
        assert f["images"].chunks == (1, 1, *SHAPE[1:])
        assert f.attrs["format"] == "smri-store"
        for key, value in f.attrs.items():  # plain types only: nothing pickled
            assert isinstance(value, (str, np.integer, int)), key
    assert json.dumps(read_info(path).as_dict())


def test_compression_is_recorded(tmp_path):
    write_small(tmp_path / "g.h5", compression="gzip-1")
    assert read_info(tmp_path / "g.h5").compression == "gzip-1"


def test_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with (
        pytest.raises(RuntimeError, match="boom"),
        plain_writer(path, 2) as w,
    ):
        w.append(images=np.zeros(SHAPE), label=0, patient_id="a")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unwritten_rows_are_trimmed(tmp_path):
    path = tmp_path / "s.h5"
    with plain_writer(path, 5) as w:
        w.append(images=np.ones(SHAPE), label=1, patient_id="only")
    with StoreReader(path) as r:
        assert len(r) == 1 and r.patient_ids == ["only"]


def test_existing_file_untouched_until_commit(tmp_path):
    path = tmp_path / "s.h5"
    path.write_bytes(b"old")
    with (
        pytest.raises(DataError, match="appeared while writing; not replaced"),
        plain_writer(path, 1, overwrite=False) as w,
    ):
        w.append(images=np.ones(SHAPE), label=1, patient_id="p")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(DataError, match="no such store"):
        StoreReader(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DataError, match=r"text\.h5: not a readable HDF5 file"):
        StoreReader(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match=r"foreign\.h5: not an smri store"):
        StoreReader(tmp_path / "foreign.h5")
    with pytest.raises(DataError, match="is a folder"):
        StoreReader(tmp_path)


def test_refuses_newer_schema_and_truncation(tmp_path):
    path = tmp_path / "s.h5"
    write_small(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = store.SCHEMA_VERSION + 1
    with pytest.raises(DataError, match="schema version 3 is newer than this smri"):
        StoreReader(path)
    write_small(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"s\.h5: not a readable HDF5 file"):
        StoreReader(path)


def test_a_locked_file_and_a_truncated_one_are_told_apart(tmp_path):
    import subprocess
    import sys

    held = tmp_path / ".held.partial"
    code = (
        "import h5py, sys, time; f = h5py.File(sys.argv[1], 'w'); print('open', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(held)], stdout=subprocess.PIPE)
    try:  # another process holds it open for writing
        assert holder.stdout.readline().strip() == b"open"
        with pytest.raises(store.LockedError, match="another process is writing this file"):
            StoreWriter.reopen(tmp_path / "held.h5", held)
    finally:
        holder.kill()
        holder.wait()
    # A writer killed before its first flush leaves only a superblock; HDF5's message then names
    # "sblock->base_addr", which is no lock.
    cut = tmp_path / ".cut.partial"
    with h5py.File(cut, "w"):
        pass
    cut.write_bytes(cut.read_bytes()[:96])
    with pytest.raises(DataError, match=r"damaged \(.*truncated") as info:
        StoreWriter.reopen(tmp_path / "cut.h5", cut)
    assert not isinstance(info.value, store.LockedError)
