"""Schema version 2: segmentation masks, tumour voxel counts and axis codes in the store, checked
against nibabel directly; version-1 stores; training never reads the masks."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.preprocessing import PreprocessConfig, orientation_warning
from smri.store import StoreReader, coverage, orientation_counts, read_info
from tests.helpers.nifti import SHAPE, expected_images, write_nifti, write_patient
from tests.helpers.stores import preprocessing_runner, to_version_1

CFG = PreprocessConfig(slices=16)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


run = preprocessing_runner(CFG, keep_lines=True)


def tumour(seed: int, shape=SHAPE, centre_z: int = 20, dtype=np.uint8) -> np.ndarray:
    """A seg volume: an ellipsoid of BraTS labels (oedema 2 around core 1 and 4) at `centre_z`."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cx, cy = rng.integers(6, 14), rng.integers(6, 18)
    r = ((x - cx) / 5.0) ** 2 + ((y - cy) / 6.0) ** 2 + ((z - centre_z) / 9.0) ** 2
    seg = np.zeros(shape, dtype=dtype)
    seg[r < 1] = 2
    seg[r < 0.4] = 1
    seg[(r < 0.4) & (rng.random(shape) < 0.3)] = 4
    return seg


def cohort(tmp_path, segs: dict[str, np.ndarray | None], affine=None, ext=".nii.gz"):
    """HGG folders with the four modalities and the given seg per patient (None: no seg file)."""
    root = tmp_path / "cohort"
    truth = {}
    for k, (pid, seg) in enumerate(segs.items()):
        folder = root / "HGG" / pid
        vols = write_patient(folder, pid, seed=k, ext=ext, seg=False)
        if affine is not None:
            for m, data in vols.items():
                write_nifti(folder / f"{pid}_{m}{ext}", data, affine)
        if seg is not None:
            write_nifti(folder / f"{pid}_seg{ext}", seg, affine)
        truth[pid] = vols
    return root, truth


def nibabel_mask(path, slices=16, canonical=False):
    """The expected mask and counts, straight from nibabel: the images' crop and axis order."""
    img = nib.load(str(path))
    if canonical:
        img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj)
    start = (data.shape[2] - slices) // 2
    slab = data[:, :, start : start + slices].T
    return slab.astype(np.uint8), int((data > 0).sum()), int((slab > 0).sum())


def test_masks_and_counts_equal_nibabel(tmp_path):
    segs = {
        "P0": tumour(0, centre_z=20),  # in the slab (slices 12..27 of 40)
        "P1": tumour(1, centre_z=4, dtype=np.int16),  # mostly below it
        "P2": tumour(2, centre_z=20).astype(np.float32),  # float labels, as some BraTS files
        "P3": None,  # no segmentation
        "P4": np.zeros(SHAPE, np.uint8),  # an empty one
    }
    root, truth = cohort(tmp_path, segs)
    out = tmp_path / "s.h5"
    summary, lines = run(root, out)
    assert summary.written == {"HGG": 5, "LGG": 0} and lines == []
    with StoreReader(out) as r:
        assert r.info.schema_version == 3
        table = r.mask_table()
        for i, pid in enumerate(r.patient_ids):
            np.testing.assert_array_equal(r.read(i), expected_images(truth[pid], 16))
            meta = r.meta(i)
            assert meta["axis_codes"] == ["RAS"] * 4
            if segs[pid] is None:
                assert r.read_mask(i) is None
                assert (meta["has_mask"], meta["tumour_voxels"]) == (False, -1)
                assert meta["tumour_voxels_in_slab"] == -1
                continue
            mask, total, in_slab = nibabel_mask(root / "HGG" / pid / f"{pid}_seg.nii.gz")
            got = r.read_mask(i)
            assert got.dtype == np.uint8 and got.shape == (16, SHAPE[1], SHAPE[0])
            np.testing.assert_array_equal(got, mask)
            assert (meta["tumour_voxels"], meta["tumour_voxels_in_slab"]) == (total, in_slab)
            assert table["has_mask"][i] and table["tumour_voxels"][i] == total
        assert set(np.unique(r.read_mask(0))) == {0, 1, 2, 4}  # labels as stored
        assert 0 < table["tumour_voxels_in_slab"][1] < 0.2 * table["tumour_voxels"][1]
        cov = r.info.coverage
    assert cov["patients_with_mask"] == 4 and cov["empty_masks"] == ["P4"]
    assert cov["low_coverage"] == ["P1"]
    with h5py.File(out) as f:
        ds = f["masks"]
        assert ds.shape == (5, 16, SHAPE[1], SHAPE[0]) and ds.dtype == np.uint8
        assert ds.chunks == (1, 16, SHAPE[1], SHAPE[0]) and ds.compression == "gzip"
        assert f["meta/has_mask"].dtype == bool and f["meta/tumour_voxels"].dtype == np.int64


def test_canonical_reorients_the_seg_like_the_images(tmp_path):
    segs = {"P0": tumour(0), "P1": tumour(1)}
    root, _ = cohort(tmp_path, segs, affine=LPS)
    out = tmp_path / "s.h5"
    run(root, out, PreprocessConfig(slices=16, canonical=True))
    with StoreReader(out) as r:
        for i, pid in enumerate(r.patient_ids):
            path = root / "HGG" / pid / f"{pid}_seg.nii.gz"
            mask, total, in_slab = nibabel_mask(path, canonical=True)
            assert not np.array_equal(mask, nibabel_mask(path)[0])  # it was flipped
            np.testing.assert_array_equal(r.read_mask(i), mask)
            meta = r.meta(i)
            assert (meta["tumour_voxels"], meta["tumour_voxels_in_slab"]) == (total, in_slab)
            assert meta["axis_codes"] == ["RAS"] * 4


def test_a_bad_seg_costs_the_mask_never_the_images(tmp_path):
    segs = {
        "P0": tumour(0),
        "P1": np.zeros((SHAPE[0], SHAPE[1], 30), np.uint8),  # another depth
        "P2": tumour(2).astype(np.float32) + 0.5,  # not whole numbers
        "P3": tumour(3),  # a second seg file, below
        "P4": tumour(4),  # oriented unlike the images, below
    }
    root, _ = cohort(tmp_path, segs)
    write_nifti(root / "HGG" / "P3" / "P3_seg.nii", tumour(3))
    write_nifti(root / "HGG" / "P4" / "P4_seg.nii.gz", tumour(4), LPS)
    summary, lines = run(root, tmp_path / "s.h5")
    assert summary.written["HGG"] == 5 and summary.skipped == []
    text = "\n".join(lines)
    assert (
        "patient P1: " in text
        and "segmentation shape (20, 24, 30) differs from the images' (20, 24, 40); stored "
        "without a mask"
        in text
    )
    assert "patient P2: " in text and "labels must be whole numbers 0..255; found 0.5" in text
    assert (
        "patient P3: 2 segmentation files (P3_seg.nii, P3_seg.nii.gz); stored without a mask"
        in text
    )
    assert "segmentation orientation LPS differs from the images' RAS" in text
    with StoreReader(tmp_path / "s.h5") as r:
        assert r.mask_table()["has_mask"].tolist() == [True, False, False, False, False]


def test_predict_never_reads_the_seg(tmp_path, monkeypatch):
    """smri predict preprocesses raw folders with masks off: the seg file is never opened."""
    from dataclasses import asdict

    import torch

    import smri.preprocessing.patient as pre
    from smri.discovery import patient_from_folder
    from smri.model_io import checkpoint_header
    from smri.networks import ModelConfig, build_model

    root, _ = cohort(tmp_path, {"P0": tumour(0)})
    cfg = ModelConfig(name="cnn2", volume_shape=(16, SHAPE[1], SHAPE[0]), width=0.25)
    ckpt = {**checkpoint_header(), "model_config": asdict(cfg), "epoch": 1,
            "model": build_model(cfg).state_dict(), "preprocess_config": CFG.to_dict(),
            "store": {"modalities": ["flair", "t1", "t1ce", "t2"], "slices": 16,
                      "volume_shape": [4, 16, SHAPE[1], SHAPE[0]],
                      "classes": {"LGG": 0, "HGG": 1}}}  # fmt: skip
    torch.save(ckpt, tmp_path / "m.pt")
    opened: list[str] = []
    real = pre.load_volume
    monkeypatch.setattr(pre, "load_volume", lambda p, **kw: opened.append(p.name) or real(p, **kw))
    folder = root / "HGG" / "P0"
    (result,) = smri_predict(tmp_path / "m.pt", folder)
    assert result.patient_id == "P0" and opened == []
    res = pre.load_patient(patient_from_folder(folder, CFG.modalities), CFG)
    assert res.mask is not None and opened == ["P0_seg.nii.gz"]  # preprocess does read it


def smri_predict(model, folder):
    import smri

    return smri.predict(model, folder, device="cpu", quiet=True, log=lambda _: None)


def test_no_masks_stores_none_and_records_it(tmp_path):
    root, _ = cohort(tmp_path, {"P0": tumour(0), "P1": tumour(1)})
    out = tmp_path / "s.h5"
    result = CliRunner().invoke(main, ["preprocess", str(root), str(out), "--no-masks", "-q",
                                       "--slices", "16"])  # fmt: skip
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert info.config["masks"] is False and info.coverage["patients_with_mask"] == 0
    with StoreReader(out) as r:
        assert r.read_mask(0) is None and r.mask_table()["tumour_voxels"].tolist() == [-1, -1]
    with h5py.File(out) as f:
        assert f["masks"].id.get_storage_size() == 0  # no chunk was ever written


def test_mixed_orientations_are_recorded_and_warned_once(tmp_path):
    root, _ = cohort(tmp_path, {"P0": None, "P1": None, "P2": None})
    for m in ("flair", "t1", "t1ce", "t2"):  # P2 (its four volumes) written LPS
        path = root / "HGG" / "P2" / f"P2_{m}.nii.gz"
        write_nifti(path, np.asarray(nib.load(str(path)).dataobj), LPS)
    path = root / "HGG" / "P1" / "P1_t2.nii.gz"  # and one volume of P1
    write_nifti(path, np.asarray(nib.load(str(path)).dataobj), LPS)
    out = tmp_path / "s.h5"
    _, lines = run(root, out)
    mixed = [line for line in lines if "mixes orientations" in line]
    assert mixed == [
        "warning: the cohort mixes orientations (patients per NIfTI axis codes: 1 LPS, 1 RAS, "
        "1 RAS/RAS/RAS/LPS); stored as read, their arrays are flipped against each other: "
        "preprocess with --canonical to reorient every volume to RAS"
    ]
    assert any("patient P1: its volumes have different orientations (" in line and
               "P1_t2.nii.gz LPS" in line for line in lines)  # fmt: skip
    info = read_info(out)
    assert info.orientations == {"LPS": 1, "RAS": 1, "RAS/RAS/RAS/LPS": 1}
    text = CliRunner().invoke(main, ["info", str(out)]).output
    assert (
        "orientation LPS 1, RAS 1, RAS/RAS/RAS/LPS 1 (patients per NIfTI axis codes); MIXED" in text
    )
    _, lines = run(root, tmp_path / "c.h5", PreprocessConfig(slices=16, canonical=True))
    assert lines == [] and read_info(tmp_path / "c.h5").orientations == {"RAS": 3}


def test_orientation_and_coverage_functions():
    assert orientation_warning({"LPS": 4}) is None
    assert orientation_warning({"LPS": 4, "unknown": 2}) is None
    assert "2 RAS, 1 LPS" in orientation_warning({"RAS": 2, "LPS": 1})
    codes = np.array([["LPS", "LPS"], ["RAS", "RAS"], ["", ""], ["LPS", "LPS"]], dtype=object)
    assert orientation_counts(codes) == {"LPS": 2, "RAS": 1, "unknown": 1}
    ids = ["a", "b", "c", "d", "e"]
    cov = coverage(ids, np.array([1, 1, 1, 0, 1], bool), np.array([100, 50, 0, -1, 10]),
                   np.array([100, 4, 0, -1, 5]))  # fmt: skip
    assert cov == {
        "patients": 5,
        "patients_with_mask": 4,
        "median_share_in_slab": 0.5,
        "low_coverage_threshold": 0.1,
        "low_coverage": ["b"],
        "empty_masks": ["c"],
    }


def test_version_1_stores_keep_working(tmp_path):
    root, _ = cohort(tmp_path, {"P0": tumour(0), "P1": tumour(1)})
    old = to_version_1(run(root, tmp_path / "v1.h5")[0].output)
    info = read_info(old)
    assert info.schema_version == 1 and info.coverage is None and info.orientations == {}
    with StoreReader(old) as r:
        assert r.read_mask(0) is None and not r.has_masks
        assert r.mask_table()["has_mask"].tolist() == [False, False]
        assert "has_mask" not in r.meta(0)
    text = CliRunner().invoke(main, ["info", str(old)]).output
    assert "masks       none (a schema v1 store has no segmentations)" in text
    # --append onto a v1 store: a v3 store whose old rows have no mask, new rows theirs
    more = tmp_path / "more"
    (more / "HGG").mkdir(parents=True)
    (root / "HGG" / "P0").rename(more / "HGG" / "P0")
    (root / "HGG" / "P1").rename(more / "HGG" / "P1")
    write_patient(more / "HGG" / "P5", "P5", seed=5, seg=False)
    write_nifti(more / "HGG" / "P5" / "P5_seg.nii.gz", tumour(5))
    result = CliRunner().invoke(main, ["preprocess", str(more), str(old), "--append", "-q",
                                       "--slices", "16"])  # fmt: skip
    assert result.exit_code == 0, result.output
    with StoreReader(old) as r:
        assert r.info.schema_version == 3 and r.patient_ids == ["P0", "P1", "P5"]
        assert r.mask_table()["has_mask"].tolist() == [False, False, True]
        assert r.info.orientations == {"RAS": 1, "unknown": 2}
        np.testing.assert_array_equal(
            r.read_mask(2), nibabel_mask(more / "HGG" / "P5" / "P5_seg.nii.gz")[0]
        )


def test_append_copies_masks(tmp_path):
    root, _ = cohort(tmp_path, {"P0": tumour(0), "P1": None, "P2": tumour(2)})
    full = tmp_path / "full.h5"
    run(root, full, PreprocessConfig(slices=16, compression="gzip-1"))
    part = tmp_path / "part"
    (part / "HGG").mkdir(parents=True)
    (root / "HGG" / "P2").rename(part / "HGG" / "P2")
    store = tmp_path / "s.h5"
    run(root, store, PreprocessConfig(slices=16, compression="gzip-1"))
    (part / "HGG" / "P2").rename(root / "HGG" / "P2")
    from smri.preprocessing import append_preprocess

    append_preprocess(root, store, PreprocessConfig(slices=16, compression="gzip-1"),
                      jobs=1, progress=False, echo=lambda _: None)  # fmt: skip
    with h5py.File(full) as a, h5py.File(store) as b:
        assert a["masks"][:].tobytes() == b["masks"][:].tobytes()
        for key in ("has_mask", "tumour_voxels", "tumour_voxels_in_slab"):
            assert a["meta"][key][:].tolist() == b["meta"][key][:].tolist()


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_training_never_reads_masks(tmp_path, monkeypatch, cache):
    """Training and StoreDataset read images, labels and ids; `masks` never."""
    import smri
    from smri.data import StoreDataset

    root, _ = cohort(tmp_path, {f"P{i}": tumour(i) for i in range(8)})
    (root / "LGG").mkdir()
    for i in range(4):  # two classes
        (root / "HGG" / f"P{i}").rename(root / "LGG" / f"P{i}")
    store = tmp_path / "s.h5"
    run(root, store)
    seen: list[str] = []  # datasets whose data were read (validation reads only headers)
    get, read_direct = h5py.Dataset.__getitem__, h5py.Dataset.read_direct

    def spy_get(self, key):
        seen.append(self.name)
        return get(self, key)

    def spy_read_direct(self, *args, **kwargs):
        seen.append(self.name)
        return read_direct(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy_get)
    monkeypatch.setattr(h5py.Dataset, "read_direct", spy_read_direct)
    monkeypatch.setattr("smri.store.StoreReader.read_mask", lambda *a: pytest.fail("read_mask"))
    smri.train(store, "cnn2", epochs=1, width=0.25, batch_size=2, cache=cache, workers=0,
               device="cpu", out=tmp_path / "run", tensorboard=False, quiet=True)  # fmt: skip
    ds = StoreDataset(store)
    ds[0]
    ds.close()
    assert seen and "/images" in seen
    assert "/masks" not in seen


def test_mask_chunk_is_the_gzip_hdf5_reads():
    from smri.store import MaskChunk

    mask = tumour(5)[:, :, 10:26].T.copy()
    chunk = MaskChunk.encode(mask)
    assert chunk.shape == mask.shape and len(chunk.data) < 0.1 * mask.nbytes
    np.testing.assert_array_equal(chunk.decode(), mask)
    import zlib

    assert zlib.decompress(chunk.data) == mask.tobytes()  # any zlib reader, HDF5's gzip filter


@pytest.mark.parametrize("jobs", [1, 2])
def test_masks_compressed_by_the_workers_equal_h5pys(tmp_path, monkeypatch, jobs):
    """The direct writer stores each worker's compressed mask as its chunk; switched off, h5py
    compresses it: the same masks either way, and the chunk is the worker's bytes."""
    from smri.store import direct

    segs = {"P0": tumour(0), "P1": None, "P2": tumour(2, dtype=np.int16), "P3": tumour(3)}
    root, _ = cohort(tmp_path, segs)
    written = []
    real = direct.MaskChunk.encode
    monkeypatch.setattr(
        direct.MaskChunk, "encode", lambda m: written.append(real(m)) or written[-1]
    )
    run(root, tmp_path / "direct.h5", jobs=jobs)
    monkeypatch.setattr(direct, "DIRECT_WRITES", False)
    run(root, tmp_path / "h5py.h5", jobs=jobs)
    assert len(written) == 3  # only the direct run's workers encoded, one per segmentation
    with h5py.File(tmp_path / "direct.h5") as a, h5py.File(tmp_path / "h5py.h5") as b:
        np.testing.assert_array_equal(a["masks"][:], b["masks"][:])
        assert a["masks"][1].max() == 0 and a["masks"][0].max() == 4
        stored = {a["masks"].id.read_direct_chunk((i, 0, 0, 0))[1] for i in (0, 2, 3)}
        assert stored == {c.data for c in written}
        assert a["masks"].compression == b["masks"].compression == "gzip"


def test_a_mask_chunk_the_dataset_cannot_take_as_bytes_is_decoded(tmp_path, monkeypatch):
    from smri.store import schema

    monkeypatch.setattr(schema, "MASK_COMPRESSION", {"compression": "lzf"})
    root, _ = cohort(tmp_path, {"P0": tumour(0), "P1": tumour(1)})
    run(root, tmp_path / "s.h5")
    with StoreReader(tmp_path / "s.h5") as r:
        for i, pid in enumerate(r.patient_ids):
            want = nibabel_mask(root / "HGG" / pid / f"{pid}_seg.nii.gz")[0]
            np.testing.assert_array_equal(r.read_mask(i), want)
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["masks"].compression == "lzf"
