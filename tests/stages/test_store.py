"""smri/store/: schema round trip, atomic writes, and clear refusals of anything else."""

from __future__ import annotations

import errno
import json
import os
import time

import h5py
import numpy as np
import pytest

from smri import store
from smri.errors import DataError
from smri.store import StoreReader, StoreWriter, read_info
from smri.store import direct as direct_writes
from smri.store.direct import aligned_empty, is_aligned
from tests.helpers.stores import direct_io_works

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


LAST_ROW = [0.0, 0.0, 0.0, 1.0]


def row_meta(i):
    return {
        "original_shape": [[240, 240, 155 + i]] * 2,
        "spacing": [[1.0, 1.0, 1.0 + i / 8]] * 2,
        "intensity_min": [float(i), -1.0],
        "intensity_max": [2.0 * i, 3.0],
        "source_files": [f"p{i}/t1.nii.gz", f"p{i}/t2 é.nii.gz"],
        "axis_codes": ["LPS", "RAS"] if i % 3 else ["RAS", "RAS"],
        "has_mask": bool(i % 2),
        "tumour_voxels": 10 * i if i % 2 else -1,
        "tumour_voxels_in_slab": i if i % 2 else -1,
        "affine": [[[0.0, 0.0, 1.0, i], [0.0, -1.0, 0.0, 2.0], [1.5, 0.0, 0.0, 3.0], LAST_ROW]] * 2,
        "slab_start": [61 + i // 2] * 2,
    }


def test_rows_arriving_in_any_order_read_back_as_written_across_a_resume(tmp_path, monkeypatch):
    """The small per-row fields are kept and written in slices: whatever the arrival order,
    the checkpoints between and a resume, every row reads back as given, in few h5py writes."""
    n, order = 9, [1, 0, 4, 3, 2, 8, 6, 7, 5]  # runs broken by later rows
    writes = []
    setitem = h5py.Dataset.__setitem__

    def counted(ds, key, value):
        writes.append(ds.name)
        return setitem(ds, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", counted)
    path, partial = tmp_path / "s.h5", tmp_path / ".s.h5.partial"
    arrays = np.random.default_rng(3).random((n, *SHAPE), dtype=np.float32)
    w = plain_writer(path, n, tmp_path=partial)

    def put(w, i):
        w.write(i, images=arrays[i], label=i % 2, patient_id=f"p{i}", meta=row_meta(i))

    for i in order[:5]:
        put(w, i)
    w.checkpoint({"done": 5})
    w.close_partial()
    w, state = StoreWriter.reopen(path, partial)
    assert state["rows"] == 5
    for i in order[5:7]:
        put(w, i)
    w.checkpoint({"done": 7})
    for i in order[7:]:
        put(w, i)
    assert w.written("labels").tolist() == [i % 2 for i in range(n)]
    w.commit()
    with StoreReader(path) as r:
        assert r.patient_ids == [f"p{i}" for i in range(n)]
        assert r.labels.tolist() == [i % 2 for i in range(n)]
        for i in range(n):
            assert r.meta(i) == row_meta(i), i
    small = [name for name in writes if not name.startswith("/images")]
    # 13 datasets; flushes: rows {0..4} (1 run), {6, 8} (2 runs), {5, 7} (2 runs)
    assert len(small) == 13 * 5 < 13 * n


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
    newer = store.SCHEMA_VERSION + 1
    with pytest.raises(DataError, match=f"schema version {newer} is newer than this smri"):
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


# ------------------------------------------------- image chunks written past the page cache
PLACED = (2, 4, 32, 32)  # float16 chunks of 8 KiB: whole pages, so written with O_DIRECT


@pytest.mark.parametrize("shape", [(4, 16, 24, 20), (3,), (0, 5), (1, 1, 1)])
@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8"])
def test_aligned_empty_starts_on_a_page(shape, dtype):
    arrays = [aligned_empty(shape, dtype) for _ in range(3)]
    for a in arrays:
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert is_aligned(a) or a.size == 0  # an empty array has no data to place
        assert a.ctypes.data % 4096 == 0 or a.size == 0
        a[...] = 1
    assert all(a.sum() == a.size for a in arrays)  # separate buffers


@pytest.fixture
def pwrites(tmp_path, monkeypatch):
    """Every os.pwrite as (fd, bytes, offset); skips where the file system has no O_DIRECT."""
    if not direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    calls, real = [], os.pwrite

    def pwrite(fd, data, offset):
        calls.append((fd, len(memoryview(data).cast("B")), offset))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return calls


def volumes(n, seed=0):
    return np.random.default_rng(seed).random((n, *PLACED), dtype=np.float32).astype(np.float16)


def masks(n, seed=0):
    return np.random.default_rng(seed).integers(0, 5, (n, *PLACED[1:]), dtype=np.uint8)


def placed_writer(path, n, **kwargs):
    return plain_writer(path, n, volume_shape=PLACED, dtype="float16", **kwargs)


def write_rows(path, data, seg, **kwargs):
    """A placed store of `data` with masks `seg`, every row through `StoreWriter.append`."""
    with placed_writer(path, len(data), **kwargs) as w:
        for i, (images, mask) in enumerate(zip(data, seg, strict=True)):
            w.append(images=images, label=i % 2, patient_id=f"p{i}", mask=mask,
                     meta={"has_mask": True, "intensity_min": [0.0, i]})  # fmt: skip
        return w


def same_datasets(a, b):
    """Every dataset of two stores holds the same bytes (the files differ in `created`)."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        keys = ["images", "labels", "patient_id", "masks", *(f"meta/{k}" for k in fa["meta"])]
        assert len(keys) == 4 + len(store.META_FIELDS) + len(store.META_FIELDS_V2) + len(
            store.META_FIELDS_V3
        )
        for key in keys:
            x, y = fa[key][:], fb[key][:]
            same = x.tolist() == y.tolist() if x.dtype.kind == "O" else x.tobytes() == y.tobytes()
            assert x.dtype == y.dtype and x.shape == y.shape and same, key


def test_placed_chunks_are_written_past_the_page_cache(tmp_path, pwrites):
    data, seg, path = volumes(4), masks(4), tmp_path / "s.h5"
    with placed_writer(path, 4) as w:
        assert w._direct is not None
        aligned = aligned_empty(PLACED, np.float16)
        aligned[...] = data[2]
        unaligned = np.frombuffer(b"\0\0" + data[3].tobytes(), np.float16, offset=2)
        unaligned = unaligned.reshape(PLACED)
        assert not is_aligned(unaligned)
        for i, images in [(2, aligned), (0, data[0]), (3, unaligned), (1, data[1])]:
            w.write(i, images=images, label=1, patient_id=f"p{i}", mask=seg[i])
    assert len(pwrites) == 4 * 2  # every image chunk, none through h5py; masks are not here
    assert {n for _, n, _ in pwrites} == {8192}
    assert all(offset % 4096 == 0 for _, _, offset in pwrites)
    with StoreReader(path) as r:
        np.testing.assert_array_equal(r.read_many(range(4)), data)
    with h5py.File(path) as f:
        assert f["images"].id.get_create_plist().get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY
        assert f["masks"].compression == "gzip"  # through h5py, compressed as ever
        np.testing.assert_array_equal(f["masks"][:], seg)


def test_placed_and_h5py_written_stores_hold_the_same_bytes(tmp_path, pwrites, monkeypatch):
    data, seg = volumes(3, seed=1), masks(3, seed=1)
    write_rows(tmp_path / "direct.h5", data, seg)
    assert len(pwrites) == 3 * 2
    monkeypatch.setattr(direct_writes, "DIRECT_WRITES", False)  # the one switch: the plain path
    w = write_rows(tmp_path / "h5py.h5", data, seg)
    assert w._direct is None and len(pwrites) == 3 * 2
    same_datasets(tmp_path / "direct.h5", tmp_path / "h5py.h5")
    with StoreReader(tmp_path / "direct.h5") as r:
        np.testing.assert_array_equal(r.read_many(range(3)), data)


def test_images_that_need_a_cast_go_through_h5py_and_the_next_row_direct(tmp_path, pwrites):
    data = volumes(3, seed=4)
    with placed_writer(tmp_path / "s.h5", 3) as w:
        w.append(images=data[0], label=0, patient_id="p0")
        w.append(images=data[1].astype(np.float32), label=0, patient_id="p1")
        w.append(images=data[2], label=0, patient_id="p2")
        assert w._direct is not None
    assert len(pwrites) == 2 * 2
    with StoreReader(tmp_path / "s.h5") as r:
        np.testing.assert_array_equal(r.read_many(range(3)), data)


def test_trimmed_rows_take_no_disk_space(tmp_path, pwrites):
    """Rows of skipped patients were allocated but never written: holes in a sparse file."""
    data = volumes(2)
    sizes = []
    for n in (2, 40):  # 38 rows skipped: allocated, never written
        with placed_writer(tmp_path / f"s{n}.h5", n) as w:
            for i, images in enumerate(data):
                w.append(images=images, label=0, patient_id=f"p{i}")
        with StoreReader(tmp_path / f"s{n}.h5") as r:
            assert len(r) == 2
            np.testing.assert_array_equal(r.read_many([0, 1]), data)
        sizes.append((tmp_path / f"s{n}.h5").stat().st_blocks * 512)
    assert sizes[1] <= sizes[0] + 16 * 1024  # not 38 * 16 KiB more


def test_a_resumed_store_goes_on_writing_placed_chunks(tmp_path, pwrites):
    data, path, partial = volumes(4), tmp_path / "s.h5", tmp_path / ".s.h5.partial"
    w = placed_writer(path, 4, tmp_path=partial)
    for i, images in enumerate(data[:2]):
        w.append(images=images, label=0, patient_id=f"p{i}")
    w.checkpoint({"done": 2})
    w.close_partial()
    assert not path.exists()
    w, state = StoreWriter.reopen(path, partial)
    assert state["done"] == 2 and w._direct is not None
    before = len(pwrites)
    for i, images in enumerate(data[2:], start=2):
        w.append(images=images, label=0, patient_id=f"p{i}")
    w.commit()
    assert len(pwrites) == before + 2 * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    with StoreReader(path) as r:
        np.testing.assert_array_equal(r.read_many(range(4)), data)


@pytest.mark.parametrize("disk_bound", [True, False], ids=["slow-disk", "fast-disk"])
def test_a_slow_disk_sends_the_writes_back_to_the_page_cache(
    tmp_path, pwrites, monkeypatch, disk_bound
):
    """Waiting on O_DIRECT writes for most of the writer's time means the disk is the limit:
    from then on the page cache takes the chunks (RAM absorbs what the disk cannot yet take)."""
    data, real = volumes(12, seed=3), os.pwrite

    def pwrite(fd, buf, offset):
        if disk_bound:
            time.sleep(0.01)  # a disk far slower than the rows arrive
        return real(fd, buf, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with placed_writer(tmp_path / "s.h5", 12) as w:
        for i, images in enumerate(data):
            w.append(images=images, label=0, patient_id=f"p{i}")
            if not disk_bound:
                time.sleep(0.02)  # rows arrive far slower than the disk writes them
            direct = w._direct is not None
            assert direct == (i + 1 < direct_writes.DIRECT_PROBE_ROWS or not disk_bound), i
    assert len(pwrites) == 2 * (direct_writes.DIRECT_PROBE_ROWS if disk_bound else 12)
    with StoreReader(tmp_path / "s.h5") as r:
        np.testing.assert_array_equal(r.read_many(range(12)), data)


def test_a_file_system_refusing_direct_writes_gets_them_through_h5py(tmp_path, monkeypatch):
    if not direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    data, seg, refused = volumes(3), masks(3), []

    def pwrite(fd, data, offset):
        refused.append(offset)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "pwrite", pwrite)
    w = write_rows(tmp_path / "s.h5", data, seg)
    assert w._direct is None  # given up after the first refusal
    assert len(refused) == 1
    monkeypatch.setattr(direct_writes, "DIRECT_WRITES", False)
    write_rows(tmp_path / "plain.h5", data, seg)
    same_datasets(tmp_path / "s.h5", tmp_path / "plain.h5")


def test_no_o_direct_at_open_means_h5py_writes(tmp_path, monkeypatch):
    """As on tmpfs, which refuses O_DIRECT with EINVAL when the file is opened."""
    real = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    data = volumes(2)
    with placed_writer(tmp_path / "s.h5", 2) as w:
        assert w._direct is None
        for i, images in enumerate(data):
            w.append(images=images, label=0, patient_id=f"p{i}")
    with StoreReader(tmp_path / "s.h5") as r:
        np.testing.assert_array_equal(r.read_many(range(2)), data)


def test_a_full_disk_during_a_direct_write_is_an_oserror(tmp_path, pwrites, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError) as info, placed_writer(tmp_path / "s.h5", 2) as w:
        w.append(images=volumes(1)[0], label=0, patient_id="p")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


@pytest.mark.parametrize(
    ("shape", "compression", "direct"),
    [((2, 3, 5, 7), None, True), (PLACED, "gzip-1", True), (PLACED, "lzf", True),
     (PLACED, None, False)],
    ids=["chunk-not-whole-pages", "gzip", "lzf", "switched-off"],
)  # fmt: skip
def test_chunks_that_cannot_be_placed_are_written_by_h5py(
    tmp_path, monkeypatch, shape, compression, direct
):
    monkeypatch.setattr(direct_writes, "DIRECT_WRITES", direct)
    data = np.random.default_rng(2).random((2, *shape), dtype=np.float32).astype(np.float16)
    with plain_writer(
        tmp_path / "s.h5", 2, volume_shape=shape, dtype="float16", compression=compression
    ) as w:
        assert w._direct is None
        for i, images in enumerate(data):
            w.append(images=images, label=0, patient_id=f"p{i}")
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["images"].id.get_create_plist().get_alloc_time() != h5py.h5d.ALLOC_TIME_EARLY
    with StoreReader(tmp_path / "s.h5") as r:
        np.testing.assert_array_equal(r.read_many(range(2)), data)
