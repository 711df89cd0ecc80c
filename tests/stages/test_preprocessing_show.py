"""`smri show`: the slab it draws equals preprocessing's, from raw folders and from stores."""

from __future__ import annotations

import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from smri.phantoms import SynthConfig, synthesize
from smri.plots import content_box, mosaic
from smri.preprocessing.show import ShownPatient, slab_figure, slab_from_folder
from smri.volume import central_slab, load_volume, minmax_normalize
from tests.helpers.cli import invoke
from tests.helpers.stores import to_version_1

matplotlib.use("Agg")

SHAPE = (48, 40, 40)  # non-square in-plane, so transposed axes would show


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-patient tiny cohort (BraTS 2019 layout)."""
    root = tmp_path_factory.mktemp("show") / "demo"
    synthesize(SynthConfig(patients=4, hgg_fraction=0.5, shape=SHAPE, seed=2), root, jobs=1)
    return root


@pytest.fixture(scope="module")
def store(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo cohort preprocessed into a store."""
    out = tmp_path_factory.mktemp("store") / "demo.h5"
    result = invoke("preprocess", demo, out, "--jobs", 1)
    assert result.exit_code == 0, result.output
    return out


def first_patient(demo: Path, grade: str = "HGG") -> Path:
    """The first patient folder of a class."""
    return sorted((demo / grade).iterdir())[0]


def test_slab_from_folder_is_preprocessing(demo: Path) -> None:
    folder = first_patient(demo)
    shown = slab_from_folder(folder, ("t1ce", "flair"), 32)
    assert shown.slab.shape == (2, 32, 40, 48)
    assert shown.slab.dtype == np.float32
    for k, mod in enumerate(("t1ce", "flair")):
        vol = load_volume(next(folder.glob(f"*_{mod}.nii.gz"))).data.astype(np.float32)
        expected = ((vol - vol.min()) / (vol.max() - vol.min() + 1e-8))[:, :, 4:36].T
        np.testing.assert_array_equal(shown.slab[k], expected)
        np.testing.assert_array_equal(shown.slab[k], central_slab(minmax_normalize(vol), 32))
    assert shown.label_text == "HGG (1)"
    assert (shown.first_slice, shown.depth) == (4, 40)
    assert shown.seg is not None and shown.seg.shape == (32, 40, 48)


def test_show_raw_folder_png(demo: Path, tmp_path: Path) -> None:
    folder = first_patient(demo, "LGG")
    out = tmp_path / "figs" / "p.png"
    result = invoke("show", folder, "--out", out, "--contours")
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out} ({folder.name}, class LGG (0))\n"
    width, height = png_size(out)
    assert width == round(3.2 * 4 * 150)  # one 3.2-inch column per modality at 150 dpi
    assert 400 < height < 800


def test_show_cohort_root_plus_id_and_montage(demo: Path, tmp_path: Path) -> None:
    pid = first_patient(demo).name
    out = tmp_path / "m.png"
    result = invoke("show", demo, pid, "--out", out, "--montage", "--modalities", "t2,flair")
    assert result.exit_code == 0, result.output
    assert png_size(out)[0] == 12 * 150


def test_show_from_store_matches_folder(demo: Path, store: Path, tmp_path: Path) -> None:
    from smri.preprocessing.show import slab_from_store

    folder = first_patient(demo)
    from_store = slab_from_store(store, folder.name, ("flair", "t2"))
    from_folder = slab_from_folder(folder, ("flair", "t2"), 32)
    assert from_store.label_text == "HGG (1)"
    assert from_store.modalities == ("flair", "t2")
    assert (from_store.first_slice, from_store.depth) == (4, 40)
    np.testing.assert_allclose(from_store.slab, from_folder.slab, atol=1e-3)  # float16 store
    out = tmp_path / "s.png"
    result = invoke("show", store, folder.name, "--out", out)
    assert result.exit_code == 0, result.output
    assert png_size(out)[0] == round(3.2 * 4 * 150)


def test_store_needs_patient_id(store: Path, tmp_path: Path) -> None:
    result = invoke("show", store, "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "Invalid value for 'PATIENT_ID'" in result.output
    assert "is a store: name the patient to show" in result.output


def test_store_unknown_patient_and_modality(store: Path, tmp_path: Path) -> None:
    result = invoke("show", store, "nobody", "--out", tmp_path / "x.png")
    assert result.exit_code == 1
    assert "no patient 'nobody' in the store (4 patients)" in result.output
    result = invoke(
        "show", store, "BraTS19_SYN_0001_1", "--modalities", "dwi", "--out", tmp_path / "x.png"
    )
    assert result.exit_code == 2
    assert "Invalid value for '--modalities'" in result.output
    assert "holds flair, t1, t1ce, t2; no dwi" in result.output
    assert not (tmp_path / "x.png").exists()


def test_unknown_patient_folder_exits_1(demo: Path, tmp_path: Path) -> None:
    result = invoke("show", demo, "BraTS19_SYN_9999_1", "--out", tmp_path / "x.png")
    assert result.exit_code == 1
    assert "no patient folder 'BraTS19_SYN_9999_1'" in result.output


def test_folder_missing_modality_exits_1(demo: Path, tmp_path: Path) -> None:
    result = invoke(
        "show", first_patient(demo), "--modalities", "flair,dwi", "--out", tmp_path / "x.png"
    )
    assert result.exit_code == 1
    assert "no dwi file in" in result.output


def test_mosaic_tiles_row_major() -> None:
    slab = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), dtype=np.float32)
    out = mosaic(slab, columns=2)
    assert out.shape == (6, 6)
    assert out[0, 0] == 0 and out[0, 3] == 1 and out[2, 0] == 2 and out[4, 0] == 4
    assert out[4, 3] == 0  # the blank sixth tile


def test_content_box_crops_to_nonzero() -> None:
    slab = np.zeros((2, 3, 10, 12), dtype=np.float32)
    slab[1, 2, 4:6, 3:9] = 1.0
    assert content_box(slab, margin=1) == (slice(3, 7), slice(2, 10))
    assert content_box(np.zeros((1, 1, 4, 4)), margin=1) == (slice(None), slice(None))


def test_slab_figure_titles() -> None:
    patient = ShownPatient(
        patient_id="P1",
        label_text="LGG (0)",
        modalities=("flair", "t1"),
        slab=np.zeros((2, 8, 10, 12), dtype=np.float32),
        first_slice=None,
        depth=None,
    )
    fig = slab_figure(patient)
    assert [ax.get_title() for ax in fig.axes] == ["flair · slab slice 5/8", "t1 · slab slice 5/8"]
    assert fig._suptitle.get_text() == "P1 · class LGG (0)"
    assert len(slab_figure(patient, montage=True).axes) == 2


def test_class_from_name_mapping_in_2020_layout(tmp_path: Path) -> None:
    root = tmp_path / "c20"
    synthesize(SynthConfig(patients=2, hgg_fraction=0.0, shape=SHAPE, layout="2020"), root, jobs=1)
    out = tmp_path / "p.png"
    result = invoke("show", root, "BraTS20_Training_002", "--out", out, "--modalities", "t1")
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out} (BraTS20_Training_002, class LGG (0))\n"
    assert png_size(out)[0] == round(3.2 * 150)


def test_contours_of_a_store_come_from_its_masks(demo: Path, store: Path, tmp_path: Path) -> None:
    from smri.preprocessing.show import slab_from_store

    folder = first_patient(demo)
    from_store = slab_from_store(store, folder.name, None)
    from_folder = slab_from_folder(folder, ("flair", "t1", "t1ce", "t2"), 32)
    np.testing.assert_array_equal(from_store.seg, from_folder.seg)
    result = invoke("show", store, folder.name, "--out", tmp_path / "x.png", "--contours")
    assert result.exit_code == 0, result.output
    old = tmp_path / "v1.h5"
    old.write_bytes(store.read_bytes())
    to_version_1(old)
    result = invoke("show", old, folder.name, "--out", tmp_path / "y.png", "--contours")
    assert result.exit_code == 1
    assert "(--contours): a schema v1 store keeps no segmentation; preprocess it again" in (
        result.output
    )
    assert not (tmp_path / "y.png").exists()


def test_contours_without_a_seg_file_are_refused(demo: Path, tmp_path: Path) -> None:
    import shutil

    folder = shutil.copytree(first_patient(demo), tmp_path / "p")
    for seg in folder.glob("*seg*"):
        seg.unlink()
    result = invoke("show", folder, "--out", tmp_path / "x.png", "--contours")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {folder}: no *seg* file with the volumes' 40 slices to outline (--contours)"
    )
    assert not (tmp_path / "x.png").exists()
    assert invoke("show", folder, "--out", tmp_path / "x.png").exit_code == 0  # without: fine
