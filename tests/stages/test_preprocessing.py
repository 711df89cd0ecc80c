"""preprocess.py and `smri preprocess`/`smri info`: exact arrays, determinism, skips, safety."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.errors import ConfigError, DataError
from smri.preprocessing import PreprocessConfig, run_preprocess
from smri.store import StoreReader
from smri.store import direct as direct_writes
from tests.helpers.nifti import SHAPE, expected_images, write_nifti
from tests.helpers.stores import direct_io_works, placed, preprocessing_runner

CFG = PreprocessConfig(slices=16)
# Two ways a store's images reach the file: at SHAPE a slab (16 x 24 x 20 float16) is not whole
# pages, so h5py writes it; at PLACED (16 x 24 x 32) it is, so smri writes it with O_DIRECT.
PLACED = (32, 24, 40)
SHAPES = pytest.mark.parametrize("shape", [SHAPE, PLACED], ids=["h5py-writes", "placed"])


run = preprocessing_runner(CFG)


@SHAPES
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_store_equals_direct_numpy(brats2019, tmp_path, ext, shape):
    root, truth = brats2019(n_hgg=2, n_lgg=2, ext=ext, shape=shape)
    out = tmp_path / "s.h5"
    summary = run(root, out)
    assert summary.written == {"HGG": 2, "LGG": 2} and summary.skipped == []
    assert placed(out) == (shape == PLACED)
    with StoreReader(out) as r:
        assert r.patient_ids == sorted(truth)
        assert r.info.volume_shape == (4, 16, shape[1], shape[0])
        for i, pid in enumerate(r.patient_ids):
            label, vols = truth[pid]
            assert r.labels[i] == label
            np.testing.assert_array_equal(r.read(i), expected_images(vols, 16))
            meta = r.meta(i)
            assert meta["original_shape"] == [list(shape)] * 4
            assert meta["intensity_min"][0] == float(vols["flair"].min())
            assert meta["source_files"][2] == f"{'HGG' if label else 'LGG'}/{pid}/{pid}_t1ce{ext}"


def test_float32_store_equals_direct_numpy(brats2020, tmp_path):
    root, truth = brats2020(n=3)
    out = tmp_path / "s.h5"
    run(root, out, PreprocessConfig(slices=8, dtype="float32", compression="gzip-1"))
    with StoreReader(out) as r:
        assert r.info.dtype == "float32" and r.info.compression == "gzip-1"
        for i, pid in enumerate(r.patient_ids):
            np.testing.assert_array_equal(r.read(i), expected_images(truth[pid][1], 8, "float32"))


@SHAPES
def test_jobs_1_and_2_give_identical_bytes(brats2019, tmp_path, shape):
    root, _ = brats2019(n_hgg=4, n_lgg=3, shape=shape)
    run(root, tmp_path / "a.h5", jobs=1)
    run(root, tmp_path / "b.h5", jobs=2)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        for key in ("images", "labels", "masks", "meta/tumour_voxels"):
            assert a[key][:].tobytes() == b[key][:].tobytes(), key
        assert list(a["patient_id"].asstr()[:]) == list(b["patient_id"].asstr()[:])


def test_o_direct_and_page_cache_writes_give_identical_bytes(brats2019, tmp_path, monkeypatch):
    """The fast path changes how image chunks reach the disk, never what the store holds."""
    if not direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system: h5py writes the chunks either way")
    root, _ = brats2019(n_hgg=3, n_lgg=2, shape=PLACED)
    calls, real = [], os.pwrite

    def pwrite(fd, data, offset):
        calls.append(offset)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    run(root, tmp_path / "direct.h5", jobs=2)
    assert len(calls) == 5 * 4  # every image chunk
    monkeypatch.setattr(direct_writes, "DIRECT_WRITES", False)
    run(root, tmp_path / "h5py.h5", jobs=2)
    assert len(calls) == 5 * 4 and not placed(tmp_path / "h5py.h5")
    with h5py.File(tmp_path / "direct.h5") as a, h5py.File(tmp_path / "h5py.h5") as b:
        for key in ("images", "labels", "masks", *(f"meta/{k}" for k in a["meta"])):
            assert a[key][:].tolist() == b[key][:].tolist(), key
        assert a["images"][:].tobytes() == b["images"][:].tobytes()


def test_broken_patients_are_skipped_with_reasons(brats2019, tmp_path):
    root, truth = brats2019(n_hgg=4, n_lgg=2)
    hgg = sorted(p for p in truth if "HGG" in p)
    (root / "HGG" / hgg[0] / f"{hgg[0]}_t1.nii.gz").write_bytes(b"")
    write_nifti(root / "HGG" / hgg[1] / f"{hgg[1]}_t2.nii.gz", np.ones((20, 24, 10), np.int16))
    write_nifti(root / "HGG" / hgg[2] / f"{hgg[2]}_flair.nii.gz", np.ones((20, 30, 40), np.int16))
    out = tmp_path / "s.h5"
    summary = run(root, out, jobs=2)
    reasons = {row["patient_id"]: row["reason"] for row in summary.skipped}
    assert set(reasons) == set(hgg[:3])
    assert "empty file (0 bytes)" in reasons[hgg[0]] and f"{hgg[0]}_t1.nii.gz" in reasons[hgg[0]]
    assert "10 slices along the third axis, fewer than the 16 asked for" in reasons[hgg[1]]
    assert "in-plane shape 20x30 differs from the store's 20x24" in reasons[hgg[2]]
    with StoreReader(out) as r:
        assert r.patient_ids == [hgg[3], *sorted(p for p in truth if "LGG" in p)]
        assert [row["patient_id"] for row in r.info.skipped] == hgg[:3]


def test_strict_stops_and_writes_nothing(brats2019, tmp_path):
    root, truth = brats2019(n_hgg=2, n_lgg=1)
    pid = sorted(truth)[0]
    (root / "HGG" / pid / f"{pid}_t1.nii.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=rf"patient {pid}: .*_t1\.nii\.gz.*\(--strict\)"):
        run(root, tmp_path / "s.h5", strict=True)
    assert not any(tmp_path.glob("*.h5")) and not any(tmp_path.glob(".*partial"))


def test_every_patient_broken_is_an_error(brats2019, tmp_path):
    root, truth = brats2019(n_hgg=1, n_lgg=1)
    for pid, (label, _) in truth.items():
        (root / ("HGG" if label else "LGG") / pid / f"{pid}_t2.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="none of its 2 patients is usable; first problem: patient"):
        run(root, tmp_path / "s.h5")


def test_existing_output_needs_overwrite(brats2019, tmp_path):
    root, _ = brats2019(n_hgg=1, n_lgg=1)
    out = tmp_path / "s.h5"
    out.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        run(root, out)
    assert out.read_bytes() == b"precious"
    run(root, out, overwrite=True)
    assert StoreReader(out).info.n_patients == 2


@SHAPES
def test_interrupted_run_leaves_previous_output(brats2019, tmp_path, monkeypatch, shape):
    root, _ = brats2019(n_hgg=3, n_lgg=1, shape=shape)
    out = tmp_path / "s.h5"
    out.write_bytes(b"previous")
    import smri.store

    calls = {"n": 0}
    original = smri.store.StoreWriter.append

    def interrupt(self, **row):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, **row)

    monkeypatch.setattr(smri.store.StoreWriter, "append", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(root, out, overwrite=True)
    assert out.read_bytes() == b"previous"
    # Only a hidden, resumable partial beside it, never a half-written OUTPUT.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.h5.partial", "brats19", "s.h5"]


def test_cli_preprocess_and_info(brats2019, tmp_path):
    root, _ = brats2019(n_hgg=2, n_lgg=1)
    out = tmp_path / "s.h5"
    runner = CliRunner()
    res = runner.invoke(main, ["preprocess", str(root), str(out), "--slices", "16", "-j", "2"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"wrote 3 patients (HGG 2, LGG 1) to {out}; skipped 0; ")
    assert res.stdout.rstrip().endswith("patients/s)")
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0
    assert "patients    3 (LGG 1, HGG 2)" in res.stdout
    assert "volumes     4 modalities (flair, t1, t1ce, t2) x 16 slices x 24 x 20" in res.stdout
    res = runner.invoke(main, ["info", str(out), "--json"])
    assert json.loads(res.stdout)["volume_shape"] == [4, 16, 24, 20]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--slices", "64"], 1, "none of its 2 patients is usable; first problem: patient"),
        (["--classes", "LGG=0"], 2, "Invalid value for '--classes'"),
        (["--modalities", "t1,t1"], 2, "modality listed twice"),
        (["--labels", "nope.csv"], 2, "nope.csv: no such file"),
        (["--dtype", "int8"], 2, "Invalid value for '--dtype'"),
        (
            ["--backend", "multiprocessing"],
            2,
            "Invalid value for '--backend': 'multiprocessing' is not one of 'threading', 'loky', "
            "'dask'.",
        ),
    ],
)
def test_cli_bad_options(brats2019, tmp_path, args, code, message):
    root, _ = brats2019(n_hgg=1, n_lgg=1)
    res = CliRunner().invoke(main, ["preprocess", str(root), str(tmp_path / "o.h5"), *args])
    assert res.exit_code == code, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.h5").exists()


def test_cli_output_folder_missing(brats2019, tmp_path):
    root, _ = brats2019(n_hgg=1, n_lgg=1)
    res = CliRunner().invoke(main, ["preprocess", str(root), str(tmp_path / "no" / "o.h5")])
    assert res.exit_code == 1
    assert f"Error: {tmp_path / 'no' / 'o.h5'}: folder {tmp_path / 'no'} does not exist" in (
        res.output
    )


def _interrupt_after(monkeypatch, n_rows):
    import smri.store

    original = smri.store.StoreWriter.append

    def append(self, **row):
        if self.rows == n_rows:
            raise KeyboardInterrupt
        return original(self, **row)

    monkeypatch.setattr(smri.store.StoreWriter, "append", append)


@SHAPES
def test_resume_after_interrupt_equals_uninterrupted(brats2019, tmp_path, monkeypatch, shape):
    root, truth = brats2019(n_hgg=3, n_lgg=3, shape=shape)
    pid = sorted(truth)[1]
    (root / "HGG" / pid / f"{pid}_t1.nii.gz").write_bytes(b"")  # a skip before the interrupt
    run(root, tmp_path / "ref.h5")
    out = tmp_path / "s.h5"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run(root, out, jobs=2)
    assert not out.exists() and (tmp_path / ".s.h5.partial").exists()
    lines = []
    summary = run_preprocess(root, out, CFG, jobs=2, resume=True, progress=False, echo=lines.append)
    assert lines[0].startswith("resuming after 3 patients (2 written)")
    assert summary.written == {"HGG": 2, "LGG": 3}
    assert [r["patient_id"] for r in summary.skipped] == [pid]
    assert not (tmp_path / ".s.h5.partial").exists()
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(out) as b:
        for key in ("images", "labels", "masks", "meta/tumour_voxels"):
            assert a[key][:].tobytes() == b[key][:].tobytes(), key
        assert list(a["patient_id"].asstr()[:]) == list(b["patient_id"].asstr()[:])
        assert a.attrs["skipped"] == b.attrs["skipped"]
        assert "partial_state" not in b.attrs


def test_stale_partial_is_replaced_and_other_settings_start_over(brats2019, tmp_path, monkeypatch):
    root, _ = brats2019(n_hgg=2, n_lgg=2)
    out = tmp_path / "s.h5"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run(root, out)
    lines = []
    run_preprocess(
        root,
        out,
        PreprocessConfig(slices=8),
        jobs=1,
        resume=True,
        progress=False,
        echo=lines.append,
    )
    assert lines[0].startswith("not resuming: ") and "other settings" in lines[0]
    assert StoreReader(out).info.slices == 8
    (tmp_path / ".s.h5.partial").write_bytes(b"garbage")
    run(root, out, overwrite=True)  # without --resume a leftover is simply removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats19", "s.h5"]
