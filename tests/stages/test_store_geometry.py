"""Schema version 3: each stored slab's place in its scan (affine, slab start), spacing in the
images' axis order, labelled dimensions; version 2 stores still read. The affines are checked
against a direct computation: a stored voxel lies where the scan's own affine puts the voxel
it was cut from."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from smri.errors import DataError
from smri.preprocessing import PreprocessConfig
from smri.store import StoreReader, read_info
from smri.volume import central_slab, scan_affine, slab_to_scan, stored_affine, to_scan_grid
from tests.helpers.nifti import MODALITIES, write_patient
from tests.helpers.stores import preprocessing_runner, to_version_2

SLICES = 16
SHAPE = (20, 24, 40)  # (X, Y, Z)
# oblique-ish, anisotropic, flipped axes and an offset: any axis mix-up moves a voxel
OBLIQUE = np.array(
    [[0.0, -2.0, 0.3, 10.0], [1.5, 0.0, 0.0, -20.0], [0.0, 0.2, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
)
run = preprocessing_runner(PreprocessConfig(slices=SLICES))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("geometry") / "c"
    vols = {}
    for i, cls in enumerate(("HGG", "LGG")):
        pid = f"BraTS19_{cls}_00{i}_1"
        vols[pid] = write_patient(root / cls / pid, pid, i, affine=OBLIQUE)
    return root, vols


@pytest.fixture(scope="module")
def stored(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("geometry-store") / "s.h5"
    run(cohort[0], out)
    return out


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (affine @ np.c_[index, np.ones(len(index))].T).T[:, :3]


def test_the_slab_affine_puts_each_stored_voxel_where_the_scan_has_it():
    rng = np.random.default_rng(0)
    start = 7
    slab = stored_affine(OBLIQUE, start)
    s, y, x = (rng.integers(0, n, 50) for n in (16, 24, 20))
    scan_index = np.c_[x, y, s + start]  # the stored (s, y, x) is the scan's (x, y, s + start)
    assert np.allclose(_world(slab, np.c_[s, y, x]), _world(OBLIQUE, scan_index))
    assert np.allclose(scan_affine(slab, start), OBLIQUE)
    assert np.allclose(slab_to_scan(start) @ [2, 3, 4, 1], [4, 3, 2 + start, 1])


def test_slab_values_go_back_onto_the_scan_grid_and_nowhere_else():
    values = np.random.default_rng(1).random((4, SLICES, 24, 20), dtype=np.float32)
    grid = to_scan_grid(values, 12, SHAPE)
    assert grid.shape == (*SHAPE, 4) and grid.dtype == np.float32
    for m in range(4):
        assert np.array_equal(central_slab(grid[..., m], SLICES), values[m])
    outside = np.ones(SHAPE[2], bool)
    outside[12 : 12 + SLICES] = False
    assert not grid[:, :, outside].any()
    with pytest.raises(ValueError, match="does not fit a scan of shape"):
        to_scan_grid(values, 30, SHAPE)  # runs past the last slice
    with pytest.raises(ValueError, match="does not fit"):
        to_scan_grid(values, 0, (24, 20, 40))  # x and y swapped


def test_the_store_records_each_volume_s_place_and_spacing_in_image_order(stored, cohort):
    start = (SHAPE[2] - SLICES) // 2
    zooms = np.sqrt((OBLIQUE[:3, :3] ** 2).sum(axis=0))  # NIfTI (x, y, z)
    with h5py.File(stored) as f:
        assert f.attrs["schema_version"] == 3
        assert f["meta/affine"].shape == (2, 4, 4, 4) and f["meta/affine"].dtype == np.float64
        assert np.allclose(f["meta/affine"][:], stored_affine(OBLIQUE, start))
        assert (f["meta/slab_start"][:] == start).all()
        assert np.allclose(f["meta/spacing"][:], zooms[::-1], atol=1e-6)  # (slice, y, x)
    with StoreReader(stored) as reader:
        place = reader.placement(0)
        assert place.known and place.slab_start == start and place.original_shape == SHAPE
        assert np.allclose(place.affine, stored_affine(OBLIQUE, start))


def test_every_dataset_names_its_dimensions_and_says_what_it_holds(stored):
    with h5py.File(stored) as f:
        assert [d.label for d in f["images"].dims] == ["patient", "modality", "slice", "y", "x"]
        assert [d.label for d in f["masks"].dims] == ["patient", "slice", "y", "x"]
        assert [d.label for d in f["meta/affine"].dims] == ["patient", "modality", "row",
                                                            "column"]  # fmt: skip
        for name in ("images", "labels", "patient_id", "masks", *(f"meta/{k}" for k in f["meta"])):
            assert f[name].attrs["description"], name
        assert "slice, y, x" in f["meta/spacing"].attrs["description"]


@pytest.mark.parametrize("canonical", [False, True])
def test_a_stored_voxel_has_the_value_of_the_scan_voxel_at_its_world_position(
    cohort, tmp_path, canonical
):
    """The direct check, independent of smri's geometry code: map every stored voxel through
    the stored affine into the world, back through the original file's affine into its voxel
    grid, and compare the seed's normalised value there."""
    root, vols = cohort
    out = tmp_path / "s.h5"
    run(root, out, cfg=PreprocessConfig(slices=SLICES, canonical=canonical))
    with StoreReader(out) as reader:
        row = reader.index_of("BraTS19_HGG_000_1")
        images = reader.read(row).astype(np.float32)
        affine = reader.placement(row).affine
    s, y, x = np.meshgrid(*(np.arange(n) for n in images.shape[1:]), indexing="ij")
    index = np.c_[s.ravel(), y.ravel(), x.ravel()]
    source = np.rint(_world(np.linalg.inv(OBLIQUE), _world(affine, index))).astype(int)
    for m, name in enumerate(MODALITIES):
        v = vols["BraTS19_HGG_000_1"][name].astype(np.float32)
        v = (v - v.min()) / (v.max() - v.min() + 1e-8)
        expected = v[source[:, 0], source[:, 1], source[:, 2]].astype(np.float16)
        assert np.array_equal(images[m].ravel(), expected.astype(np.float32)), name


def test_a_version_2_store_reads_with_spacing_in_image_order_and_an_unknown_place(stored, tmp_path):
    old = to_version_2(Path(shutil.copy(stored, tmp_path / "v2.h5")))
    assert read_info(old).schema_version == 2
    with StoreReader(stored) as new, StoreReader(old) as reader:
        assert reader.meta(0)["spacing"] == new.meta(0)["spacing"]
        assert "affine" not in reader.meta(0)
        place = reader.placement(0)
        assert not place.known and place.slab_start == -1
        assert np.allclose(place.affine, np.diag([*new.meta(0)["spacing"][0], 1.0]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f["meta"].__delitem__("affine"), "'meta/affine' is missing"),
        (lambda f: f["meta"].__delitem__("slab_start"), "'meta/slab_start' is missing"),
        (
            lambda f: (
                f["meta"].__delitem__("slab_start"),
                f["meta"].create_dataset("slab_start", data=np.full((2, 4), "x", "S1")),
            ),
            "'meta/slab_start' is |S1, expected integers",
        ),
    ],
    ids=["no-affine", "no-slab-start", "slab-start-of-text"],
)
def test_a_version_3_store_without_its_fields_is_refused(stored, tmp_path, change, message):
    bad = Path(shutil.copy(stored, tmp_path / "bad.h5"))
    with h5py.File(bad, "a") as f:
        change(f)
    with pytest.raises(DataError, match="damaged smri store") as err:
        StoreReader(bad)
    assert message in str(err.value)


def test_a_non_finite_or_singular_stored_affine_reads_as_unknown(stored, tmp_path):
    bad = Path(shutil.copy(stored, tmp_path / "bad.h5"))
    with h5py.File(bad, "a") as f:
        f["meta/affine"][0] = np.nan
        f["meta/affine"][1] = 0.0
    with StoreReader(bad) as reader:
        assert not reader.placement(0).known and not reader.placement(1).known


def test_nibabel_reads_the_orientation_the_store_records(stored):
    with StoreReader(stored) as reader:
        codes = reader.meta(0)["axis_codes"][0]
        scan = scan_affine(reader.placement(0).affine, reader.placement(0).slab_start)
    assert "".join(nib.aff2axcodes(scan)) == codes
