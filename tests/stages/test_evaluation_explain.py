"""saliency.py and `smri explain`: integrated gradients, the share inside the tumour (1 when all
inside, 0 when all outside), the montages and numbers, and evaluate's mean share."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import smri
from smri.evaluation.explanation import summarise
from smri.evaluation.saliency import (
    chance_share,
    integrated_gradients,
    share_by_modality,
    share_inside,
)
from smri.networks import ModelConfig, build_model
from tests.helpers.cli import invoke
from tests.helpers.stores import to_version_1
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

SHAPE = (4, 16, 32, 32)
FAST = ["--width", "0.25", "--batch-size", "4", "--epochs", "2", "--cache", "ram", "--workers", "0"]


# ------------------------------------------------------------------------ share inside


def test_share_is_1_all_inside_and_0_all_outside():
    mask = np.zeros((4, 6, 5), np.uint8)
    mask[1:3, 2:4, 1:4] = 2  # any label > 0 is tumour
    inside = np.where(mask > 0, 1.0, 0.0)[None].repeat(3, axis=0)  # (M, S, H, W)
    assert share_inside(inside, mask) == 1.0
    assert share_inside(1.0 - inside, mask) == 0.0
    assert share_inside(inside[0], mask) == 1.0  # one modality
    # negative saliency counts for nothing; the share is of the positive part
    mixed = inside - 5.0 * (1.0 - inside)
    assert share_inside(mixed, mask) == 1.0
    assert share_inside(-inside, mask) is None  # nothing positive
    half = inside + (1.0 - inside) * (inside.sum() / (1.0 - inside).sum())
    assert share_inside(half, mask) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"saliency \(3, 4, 6, 5\) and mask \(4, 6, 6\) disagree"):
        share_inside(inside, np.zeros((4, 6, 6)))


def test_share_by_modality_and_chance():
    sal = np.zeros((2, 1, 2, 2))
    sal[0] = 1.0
    sal[1, 0, 0, 0] = 3.0
    sal[1, 0, 0, 1] = -9.0
    np.testing.assert_allclose(share_by_modality(sal), [4 / 7, 3 / 7])
    images = np.zeros((2, 1, 2, 2))
    images[0, 0, :, 0] = 1  # a head of 2 voxels
    mask = np.array([[[1, 1], [0, 0]]])
    assert chance_share(images, mask) == 0.5


def test_summary_calls_out_a_model_looking_elsewhere():
    rows = [{"share_in_tumour": s, "chance_share": 0.1} for s in (0.2, 0.3, None)]
    s = summarise(rows)
    assert (s["n"], s["n_with_tumour"], s["share_in_tumour_mean"]) == (3, 2, 0.25)
    assert s["mostly_outside"] is True and s["share_over_chance"] == 2.5
    assert s["verdict"].startswith("WARNING: the saliency lies mostly outside the tumour (mean")
    assert "0.25 over 2 patients, 2.5 times the 0.10 of a saliency spread evenly" in s["verdict"]
    assert "looks at the tumour more than at the rest" in s["verdict"]
    s = summarise([{"share_in_tumour": 0.25, "chance_share": 0.2}])
    assert "no better than chance, the model may rely on something other" in s["verdict"]
    s = summarise([{"share_in_tumour": 0.0026, "chance_share": 0.0013}])  # tumour barely in slab
    assert "tumour 0.0026 over 1 patient, 2.0 times the 0.0013 of a saliency" in s["verdict"]
    s = summarise([{"share_in_tumour": 0.8, "chance_share": 0.1}])
    assert s["mostly_outside"] is False and s["verdict"].startswith("the saliency lies mostly in")
    s = summarise([{"share_in_tumour": None, "chance_share": None}])
    assert s["mostly_outside"] is None and "unknown" in s["verdict"]


# ---------------------------------------------------------------- integrated gradients


class Linear(nn.Module):
    """logit = <w, x> + b over (B, M, S, H, W): integrated gradients from zeros are w * x."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = nn.Parameter(w), b

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3, 4)) + self.b


@pytest.mark.parametrize("b", [0.5, -40.0])
def test_integrated_gradients_of_a_linear_model_are_w_times_x(b):
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(SHAPE, generator=gen), torch.rand(SHAPE, generator=gen)
    attr = integrated_gradients(Linear(w, b).eval(), x, steps=3, batch_size=2)
    sign = 1.0 if float((w * x).sum()) + b >= 0 else -1.0  # toward the predicted class
    np.testing.assert_allclose(attr.attributions, sign * (w * x).numpy(), rtol=1e-5, atol=1e-6)
    assert attr.attributions.shape == SHAPE and attr.attributions.dtype == np.float32
    assert attr.completeness_error < 1e-4
    assert attr.logit == pytest.approx(float((w * x).sum()) + b, rel=1e-5)


def test_integrated_gradients_of_the_cnn_lstm_are_nearly_complete():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn3", volume_shape=SHAPE[1:], width=0.25)).eval()
    x = torch.rand(SHAPE)
    attr = integrated_gradients(model, x, steps=16, batch_size=8)
    assert attr.attributions.shape == SHAPE
    assert attr.completeness_error < 0.1
    assert not model.lstm.training and not model.training  # modes restored
    with torch.no_grad():
        assert attr.logit == pytest.approx(float(model(x[None])[0]), abs=1e-5)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        integrated_gradients(model, x, steps=0)


# ------------------------------------------------------------------------ smri explain


STORE_MASKS = True  # conftest's `store`: class 1 patients have a tumour mask


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    result = invoke("train", store, *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_explain_writes_montages_and_numbers_for_the_validation_patients(run, store):
    result = invoke("explain", run / "best.pt", store, "--steps", "4", "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    val = json.loads((run / "split.json").read_text())["val"]
    assert [r["patient_id"] for r in report["rows"]] == val
    assert report["patients"] == f"the {len(val)} validation patients of the run (split.json)"
    assert report["method"] == "integrated gradients" and report["steps"] == 4
    out = run / "explain-s"
    assert json.loads((out / "explain.json").read_text()) == report
    for r in report["rows"]:
        png = Image.open(out / r["png"])
        assert png.format == "PNG" and png.size[0] >= 1500  # 150 dpi, 12 inches wide
        assert sum(r["saliency_by_modality"].values()) == pytest.approx(1.0, abs=1e-3)
        if r["label"] == 1:  # the cube is the tumour
            assert 0.0 <= r["share_in_tumour"] <= 1.0 and r["note"] is None
            assert set(r["share_in_tumour_by_modality"]) == {"flair", "t1", "t1ce", "t2"}
            assert 0 < r["chance_share"] < 0.1
        else:
            assert r["share_in_tumour"] is None and r["note"] == "no tumour voxel in the slab"
    shares = [r["share_in_tumour"] for r in report["rows"] if r["share_in_tumour"] is not None]
    assert report["share_in_tumour_mean"] == pytest.approx(np.mean(shares), abs=1e-4)
    assert report["mostly_outside"] == (report["share_in_tumour_mean"] < 0.5)


def test_explain_given_ids_table_and_refusals(run, store, tmp_path):
    out = tmp_path / "e"
    result = invoke("explain", run / "best.pt", store, "P001", "P000", "--steps", "2",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["patient_id", "predicted", "P(1)", "in", "tumour", "chance", "note"]
    assert [line.split()[0] for line in lines[1:3]] == ["P001", "P000"]
    assert lines[2].endswith("no tumour voxel in the slab")
    assert "the saliency lies mostly" in lines[3]
    assert sorted(p.name for p in out.iterdir()) == ["P000.png", "P001.png", "explain.json"]
    again = invoke("explain", run / "best.pt", store, "P001", "--out", out)
    assert again.exit_code == 2 and "already holds explain.json" in again.output
    missing = invoke("explain", run / "best.pt", store, "nobody", "--out", tmp_path / "x")
    assert missing.exit_code == 1 and "no patient 'nobody' in the store" in missing.output


def test_explain_without_masks_or_split_says_so(run, store, tmp_path):
    old = tmp_path / "v1.h5"
    old.write_bytes(store.read_bytes())
    to_version_1(old)
    model = tmp_path / "m" / "best.pt"  # a checkpoint with no split.json beside it
    model.parent.mkdir()
    model.write_bytes((run / "best.pt").read_bytes())
    lines: list[str] = []
    report = smri.explain(model, old, steps=2, log=lines.append)
    assert (
        report["patients"] == "the first 8 patients of the store (no split.json beside the model)"
    )
    assert [r["note"] for r in report["rows"]] == ["no mask in the store"] * 8
    assert report["share_in_tumour_mean"] is None and "unknown" in report["verdict"]
    assert any("schema v1 store: no masks to compare the saliency with" in line for line in lines)


def test_evaluate_adds_the_mean_share_over_validation_patients(run, store, tmp_path):
    report = smri.evaluate(run / "best.pt", store, out=tmp_path / "a", saliency_patients=8,
                           quiet=True, log=lambda _: None)  # fmt: skip
    val = json.loads((run / "split.json").read_text())["val"]
    ones = sorted(pid for pid in val if int(pid[1:]) % 2 == 1)  # class 1: the cube is its tumour
    assert report["saliency_in_tumour_n"] == len(ones) == 2  # of the 4 validation patients
    assert 0.0 <= report["saliency_in_tumour_mean"] <= 1.0
    assert report["saliency_method"].startswith("integrated gradients, 32 steps")
    explained = smri.explain(run / "best.pt", store, ones, out=tmp_path / "e", quiet=True)
    mean = np.mean([r["share_in_tumour"] for r in explained["rows"]])
    assert report["saliency_in_tumour_mean"] == pytest.approx(mean, abs=1e-4)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["saliency_in_tumour_mean"] == report["saliency_in_tumour_mean"]
    skipped = smri.evaluate(run / "best.pt", store, out=tmp_path / "b", saliency_patients=0,
                            quiet=True)  # fmt: skip
    assert "saliency_in_tumour_mean" not in skipped
    one = smri.evaluate(run / "best.pt", store, out=tmp_path / "c", saliency_patients=1,
                        quiet=True, log=lambda _: None)  # fmt: skip
    assert one["saliency_in_tumour_n"] == 1
    with h5py.File(store) as f:
        assert f.attrs["schema_version"] == 3  # the current schema: masks and placements


def test_the_table_never_shows_a_share_above_zero_as_zero():
    from smri.evaluation import percent

    shares = (None, 0.0, 0.001, 0.005, 0.0051, 0.27, 0.995, 0.9999, 1.0)
    assert [percent(x) for x in shares] == [
        "-", "0 %", "<1 %", "<1 %", "1 %", "27 %", ">99 %", ">99 %", "100 %"]  # fmt: skip


@pytest.mark.parametrize("chance", [None, 0.0])
def test_a_verdict_without_a_chance_share_makes_no_comparison(chance):
    s = summarise([{"share_in_tumour": 0.3, "chance_share": chance}])
    assert s["verdict"] == (
        "WARNING: the saliency lies mostly outside the tumour (mean share of the positive "
        "saliency inside the tumour 0.30 over 1 patient); look at the montages"
    )


# ------------------------------------------------------------------- saliency in scan space

OBLIQUE = np.array(  # flipped, anisotropic, slightly oblique, offset: no axis can be mixed up
    [[-1.2, 0.0, 0.1, 80.0], [0.0, 0.9, 0.0, -40.0], [0.05, 0.0, 2.0, 12.0], [0.0, 0.0, 0.0, 1.0]]
)
SCAN = (32, 32, 40)  # stored as (4, 16, 32, 32), the shape the run's models take


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three patients on the OBLIQUE grid, preprocessed: (cohort root, store, their arrays)."""
    from smri.preprocessing import PreprocessConfig
    from tests.helpers.nifti import write_patient
    from tests.helpers.stores import preprocessing_runner

    tmp = tmp_path_factory.mktemp("scans")
    vols = {}
    for i, cls in enumerate(("HGG", "HGG", "LGG")):
        pid = f"BraTS19_{cls}_00{i}_1"
        vols[pid] = write_patient(tmp / "c" / cls / pid, pid, i, shape=SCAN, affine=OBLIQUE)
    preprocessing_runner(PreprocessConfig(slices=16))(tmp / "c", tmp / "s.h5")
    return tmp / "c", tmp / "s.h5", vols


def test_explain_nifti_writes_each_saliency_on_the_scan_grid(run, scans, tmp_path):
    import nibabel as nib

    root, store, _ = scans
    out = tmp_path / "e"
    result = invoke("explain", run / "best.pt", store, "--steps", "2", "--nifti", "--json",
                    "-q", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    start = (SCAN[2] - 16) // 2
    for r in rows:
        assert r["nifti"] == f"{r['patient_id']}_saliency.nii.gz"
        img = nib.load(out / r["nifti"])
        data = np.asarray(img.dataobj)
        assert data.shape == (*SCAN, 4) and data.dtype == np.float32
        scan = nib.load(next((root).rglob(f"{r['patient_id']}_flair.nii.gz")))
        assert np.allclose(img.affine, scan.affine) and img.header["sform_code"] == 1
        assert data[:, :, start : start + 16].any()
        assert not data[:, :, :start].any() and not data[:, :, start + 16 :].any()


def test_the_nifti_overlays_the_scan_it_came_from(scans, tmp_path):
    """The stored images themselves, written as a 'saliency', are the seed's normalised scans
    again at every voxel of the slab: the placement is exact."""
    import nibabel as nib

    from smri.evaluation.scan_space import write_saliency_nifti
    from smri.store import StoreReader

    _, store, vols = scans
    pid = "BraTS19_HGG_001_1"
    with StoreReader(store) as reader:
        row = reader.index_of(pid)
        path = write_saliency_nifti(reader, row, reader.read(row), tmp_path / "x.nii.gz")
    data = np.asarray(nib.load(path).dataobj)
    start = (SCAN[2] - 16) // 2
    for m, name in enumerate(("flair", "t1", "t1ce", "t2")):
        v = vols[pid][name].astype(np.float32)
        v = (v - v.min()) / (v.max() - v.min() + 1e-8)
        expected = v[:, :, start : start + 16].astype(np.float16).astype(np.float32)
        assert np.array_equal(data[:, :, start : start + 16, m], expected), name


def test_explain_nifti_refuses_a_store_that_records_no_place(run, scans, tmp_path):
    from tests.helpers.stores import to_version_2

    old = tmp_path / "v2.h5"
    old.write_bytes(scans[1].read_bytes())
    to_version_2(old)
    result = invoke("explain", run / "best.pt", old, "--nifti", "--out", tmp_path / "e")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {old}: a schema v2 store records no affine or slab start, so saliency cannot be "
        "put back on the scans; make it again with `smri preprocess` (or leave out --nifti)"
    ]
    assert invoke("explain", run / "best.pt", old, "--steps", "2", "--out",
                  tmp_path / "f").exit_code == 0  # fmt: skip


def test_a_patient_whose_volumes_differ_in_grid_keeps_its_montage(run, scans, tmp_path):
    bad = tmp_path / "s.h5"
    bad.write_bytes(scans[1].read_bytes())
    with h5py.File(bad, "a") as f:
        f["meta/affine"][0, 2] = f["meta/affine"][0, 2] * 2  # t1ce of the first patient
    lines: list[str] = []
    report = smri.explain(run / "best.pt", bad, steps=2, nifti=True, out=tmp_path / "e",
                          log=lines.append)  # fmt: skip
    first, *others = report["rows"]
    assert first["nifti"] is None and (tmp_path / "e" / first["png"]).is_file()
    assert all(r["nifti"] for r in others)
    assert any("lie on different grids" in line for line in lines)
