"""`smri synth`: layouts, formats, determinism, truth vs segmentation, contrast, bad options."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smri.phantoms import (
    SynthConfig,
    anatomy,
    cohort,
    make_phantom,
    phantom_features,
    stats_only_auc,
    synthesize,
    write,
)
from smri.phantoms.anatomy import CSF, ENHANCING, GM, MODALITIES, WM
from smri.phantoms.write import NAME_MAPPING_COLUMNS, TRUTH_COLUMNS
from tests.helpers.bad_values import cases
from tests.helpers.cli import digest, invoke

SHAPE = (48, 48, 40)  # 5 x 5 x 3.9 mm voxels over the BraTS field of view
FILES = (*MODALITIES, "seg")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV as dicts."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohort2019(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny patients in the BraTS 2019 layout (generated once for the module)."""
    root = tmp_path_factory.mktemp("synth") / "c2019"
    synthesize(SynthConfig(patients=6, hgg_fraction=0.5, shape=SHAPE, seed=3), root, jobs=1)
    return root


def test_layout_2019_tree_and_truth(cohort2019: Path) -> None:
    rows = read_csv(cohort2019 / "truth.csv")
    assert tuple(rows[0]) == TRUTH_COLUMNS
    assert [r["patient_id"] for r in rows] == [f"BraTS19_SYN_{i:04d}_1" for i in range(1, 7)]
    assert sorted(r["grade"] for r in rows) == ["HGG"] * 3 + ["LGG"] * 3
    for r in rows:
        folder = cohort2019 / r["grade"] / r["patient_id"]
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(f"{r['patient_id']}_{f}.nii.gz" for f in FILES)
        assert r["label"] == ("1" if r["grade"] == "HGG" else "0")
    assert sorted(p.name for p in cohort2019.iterdir()) == [
        ".smri-synth",
        "HGG",
        "LGG",
        "truth.csv",
    ]
    assert not list(cohort2019.rglob("*.partial"))


def test_volumes_dtype_shape_affine_and_labels(cohort2019: Path) -> None:
    folder = next((cohort2019 / "HGG").iterdir())
    for name in FILES:
        img = nib.load(next(folder.glob(f"*_{name}.nii.gz")))
        data = np.asanyarray(img.dataobj)
        assert data.shape == SHAPE
        assert data.dtype == (np.uint8 if name == "seg" else np.int16)
        np.testing.assert_allclose(np.diag(img.affine), [-5.0, -5.0, 155 / 40, 1.0])
        np.testing.assert_allclose(img.header.get_zooms(), [5.0, 5.0, 155 / 40])
        assert data[0, 0, 0] == 0  # background (air) is exactly 0, as in BraTS
        if name == "seg":
            assert set(np.unique(data)) <= {0, 1, 2, 4}
        else:
            assert data.min() == 0 and 100 < data.max() < 32767


def test_truth_matches_segmentation(cohort2019: Path) -> None:
    for r in read_csv(cohort2019 / "truth.csv"):
        seg = np.asanyarray(
            nib.load(
                cohort2019 / r["grade"] / r["patient_id"] / f"{r['patient_id']}_seg.nii.gz"
            ).dataobj
        )
        counts = np.bincount(seg.ravel(), minlength=5)
        assert int(r["voxels_necrotic_core"]) == counts[1]
        assert int(r["voxels_oedema"]) == counts[2]
        assert int(r["voxels_enhancing"]) == counts[4]
        assert counts[1] + counts[4] > 0  # every patient has a tumour core
        if r["grade"] == "LGG" and r["atypical"] == "0":
            assert counts[4] == 0  # typical LGG: non-enhancing
        if r["grade"] == "HGG":
            assert counts[4] > 0
        c = (int(r["centre_x"]), int(r["centre_y"]), int(r["centre_z"]))
        assert all(0 <= v < n for v, n in zip(c, SHAPE, strict=True))
        start = (SHAPE[2] - 32) // 2
        assert r["centre_in_slab"] == str(int(start <= c[2] < start + 32))
        in_slab = np.count_nonzero(seg[:, :, start : start + 32])
        assert (int(r["tumour_voxels"]), int(r["tumour_voxels_in_slab"])) == (
            np.count_nonzero(seg), in_slab)  # fmt: skip
        assert float(r["share_in_slab"]) == round(in_slab / np.count_nonzero(seg), 4)


def test_layout_2020_and_uncompressed_format(tmp_path: Path) -> None:
    result = invoke(
        "synth",
        tmp_path / "c",
        "-n",
        3,
        "--layout",
        "2020",
        "--format",
        "nii",
        "--shape",
        *SHAPE,
        "--jobs",
        1,
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 patients (HGG 2, LGG 1)" in result.output
    root = tmp_path / "c"
    pids = [f"BraTS20_Training_{i:03d}" for i in (1, 2, 3)]
    names = sorted(p.name for p in root.iterdir())
    assert names == [".smri-synth", *pids, "name_mapping.csv", "truth.csv"]
    mapping = read_csv(root / "name_mapping.csv")
    assert tuple(mapping[0]) == NAME_MAPPING_COLUMNS
    assert [m["BraTS_2020_subject_ID"] for m in mapping] == pids
    truth = {r["patient_id"]: r["grade"] for r in read_csv(root / "truth.csv")}
    assert {m["BraTS_2020_subject_ID"]: m["Grade"] for m in mapping} == truth
    assert mapping[0]["BraTS_2019_subject_ID"] == "BraTS19_SYN_0001_1"
    flair = root / pids[0] / f"{pids[0]}_flair.nii"
    assert flair.read_bytes()[:4] == (348).to_bytes(4, "little")  # plain NIfTI-1, not gzip
    assert nib.load(flair).shape == SHAPE


def test_same_seed_same_bytes_for_any_jobs(tmp_path: Path) -> None:
    cfg = SynthConfig(patients=4, shape=SHAPE, seed=11)
    synthesize(cfg, tmp_path / "a", jobs=1)
    synthesize(cfg, tmp_path / "b", jobs=2)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert len(a) == 4 * 5 + 2  # + truth.csv and the marker
    assert a == b
    synthesize(SynthConfig(patients=4, shape=SHAPE, seed=12), tmp_path / "c", jobs=1)
    flair_a = {Path(k).name: v for k, v in a.items() if k.endswith("flair.nii.gz")}
    flair_c = {
        Path(k).name: v for k, v in digest(tmp_path / "c").items() if k.endswith("flair.nii.gz")
    }
    assert flair_a.keys() == flair_c.keys()
    assert all(flair_a[k] != flair_c[k] for k in flair_a)


def test_gzip_header_has_no_time_or_name(cohort2019: Path) -> None:
    path = next(cohort2019.rglob("*_t1.nii.gz"))
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert raw[3] & 0x08 == 0  # no file name stored
    assert gzip.decompress(raw)[:4] == (348).to_bytes(4, "little")


def test_cohort_grades_follow_fraction() -> None:
    specs = cohort(SynthConfig(patients=40, hgg_fraction=0.77, seed=0))
    assert sum(s.label for s in specs) == 31  # round(40 * 0.77)
    assert [s.index for s in specs] == list(range(1, 41))
    assert specs[0].folder == f"{specs[0].grade}/BraTS19_SYN_0001_1"
    assert all(s.grade == "LGG" for s in cohort(SynthConfig(patients=5, hgg_fraction=0.0)))


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_tissue_contrast_per_modality(index: int) -> None:
    ph = make_phantom(5, index, "HGG" if index % 2 else "LGG", (96, 96, 48))
    t = ph.tissue

    def mean(mod: str, label: int) -> float:
        return float(ph.volumes[mod][t == label].mean())

    assert mean("t1", WM) > mean("t1", GM) > mean("t1", CSF)
    assert mean("t2", CSF) > mean("t2", GM) > mean("t2", WM)
    assert mean("flair", CSF) < 0.5 * mean("flair", WM)  # CSF suppressed
    seg = ph.seg
    lesion = (seg == 2) | (seg == 1) if index % 2 == 0 else seg == 2
    assert ph.volumes["flair"][lesion].mean() > 1.2 * mean("flair", WM)  # lesion bright
    assert ph.volumes["t2"][lesion].mean() > 1.4 * mean("t2", WM)
    if (t == ENHANCING).any():
        ratio_ce = mean("t1ce", ENHANCING) / mean("t1ce", WM)
        ratio_t1 = mean("t1", ENHANCING) / mean("t1", WM)
        assert ratio_ce > ratio_t1 + 0.1  # T1ce = T1 plus enhancement


def test_tumour_sizes_overlap_hgg_larger_on_average() -> None:
    def lesion_radius(grade: str, i: int) -> float:
        p = anatomy._tumour_params(np.random.default_rng([9, i]), grade)
        return float(np.cbrt(np.prod(p["radii"])) * p["oedema_factor"])

    hgg = np.array([lesion_radius("HGG", i) for i in range(400)])
    lgg = np.array([lesion_radius("LGG", i) for i in range(400)])
    assert hgg.mean() > lgg.mean() + 2.0
    assert hgg.min() < np.median(lgg) < hgg.max()  # overlap, not two separate ranges
    atypical = [anatomy._tumour_params(np.random.default_rng([9, i]), "LGG") for i in range(400)]
    share = np.mean([p["atypical"] for p in atypical])
    assert 0.02 < share < 0.12
    assert {p["atypical_kind"] for p in atypical} == {"", "faint_enhancement"}


def test_tumour_positions_along_the_slice_axis_are_brats_like() -> None:
    """At BraTS depth most tumours overlap the central slab, a third are centred outside it,
    and a few leave less than 10 % of their voxels in it (what `smri info` reports)."""
    rows = [make_phantom(1, i, "HGG", (24, 24, 155)).truth for i in range(48)]
    centred = np.mean([r["centre_in_slab"] for r in rows])
    share = np.array([r["share_in_slab"] for r in rows])
    assert 0.5 <= centred <= 0.85
    assert 0.35 <= np.median(share) <= 0.75
    assert np.mean((share > 0) & (share < 1)) > 0.85  # partly outside: the usual case
    assert 1 <= (share < 0.1).sum() <= 8


@pytest.mark.parametrize(
    ("args", "option", "message"), cases("synth")
)  # tests/helpers/bad_values.py
def test_bad_options_exit_2_naming_option(
    tmp_path: Path, args: list, option: str, message: str
) -> None:
    result = invoke("synth", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke("synth", out, "-n", 3, "--shape", *SHAPE, "-j", 1).exit_code == 0
    result = invoke("synth", out, "-n", 2, "--shape", *SHAPE, "-j", 1)
    assert result.exit_code == 2
    assert f"Invalid value for 'OUT': {out} is not empty; pass --overwrite" in result.output
    (out / "notes.txt").write_text("mine")
    result = invoke("synth", out, "-n", 2, "--shape", *SHAPE, "-j", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(read_csv(out / "truth.csv")) == 2
    assert len(list(out.rglob("*_flair.nii.gz"))) == 2  # the 3-patient cohort is gone
    assert (out / "notes.txt").read_text() == "mine"  # what synth did not write stays


def test_overwrite_never_deletes_what_synth_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "brats"
    (out / "HGG" / "BraTS19_2013_10_1").mkdir(parents=True)
    result = invoke("synth", out, "-n", 2, "--shape", *SHAPE, "--overwrite")
    assert result.exit_code == 2
    assert "Invalid value for '--overwrite'" in result.output
    assert "holds HGG, which smri synth did not write (no .smri-synth file)" in result.output
    assert (out / "HGG" / "BraTS19_2013_10_1").is_dir()


def test_interrupted_run_leaves_no_partial_or_fake_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = write.nifti_bytes
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 8:  # in the middle of patient 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "nifti_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthesize(SynthConfig(patients=3, shape=SHAPE), tmp_path / "out", jobs=1)
    out = tmp_path / "out"
    assert not list(out.rglob("*.partial"))
    assert not (out / "truth.csv").exists()
    complete = [p for p in out.rglob("*") if p.is_file() and p.name != ".smri-synth"]
    assert len(complete) == 5  # patient 1 only; patient 2 has no file under a real name
    assert [p.name for p in out.rglob("BraTS19_*") if p.is_dir()] == ["BraTS19_SYN_0001_1"]
    for p in complete:
        assert nib.load(p).shape == SHAPE


def test_preprocess_reads_what_synth_writes(cohort2019: Path, tmp_path: Path) -> None:
    import h5py

    store = tmp_path / "s.h5"
    result = invoke("preprocess", cohort2019, store, "--jobs", 1)
    assert result.exit_code == 0, result.output
    truth = {r["patient_id"]: int(r["label"]) for r in read_csv(cohort2019 / "truth.csv")}
    with h5py.File(store, "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["patient_id"][:]]
        labels = f["labels"][:].tolist()
        assert f["images"].shape == (6, 4, 32, 48, 48)
    assert dict(zip(ids, labels, strict=True)) == truth


def test_stats_only_classifier_stays_weak() -> None:
    """Global intensity statistics must not separate the grades: the CNN has to see the rim."""
    from joblib import Parallel, delayed

    shape = (64, 64, 155)  # BraTS depth, so the slab covers the same 32 mm as at full size
    specs = cohort(SynthConfig(patients=80, hgg_fraction=0.5, shape=shape, seed=0))
    feats = Parallel(n_jobs=2)(delayed(phantom_features)(0, s.index, s.grade, shape) for s in specs)
    auc = stats_only_auc(np.array(feats), np.array([s.label for s in specs]))
    assert 0.5 <= auc <= 0.80
