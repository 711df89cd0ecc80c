"""smri.StoreDataset(as_dict=True): samples in MONAI's dictionary form whose image carries the
patient's affine, so MONAI dictionary transforms and TorchIO subjects work unchanged and
results can be placed back in scanner space. MONAI and TorchIO tests run where installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from smri import StoreDataset
from smri.errors import ConfigError
from smri.preprocessing import PreprocessConfig
from smri.store import StoreReader
from tests.helpers.nifti import SHAPE, write_nifti, write_patient
from tests.helpers.stores import preprocessing_runner
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

SLICES = 16
# left-posterior-superior axes, anisotropic voxels, an offset: not the identity anywhere
LPS = np.array([[-1.0, 0, 0, 90], [0, -1.25, 0, 120], [0, 0, 2.5, -60], [0, 0, 0, 1]])
TUMOUR = (slice(4, 9), slice(6, 12), slice(18, 24))  # (x, y, z) in the scan: inside the slab
needs_monai = pytest.mark.skipif(not importlib.util.find_spec("monai"), reason="no MONAI")
needs_torchio = pytest.mark.skipif(not importlib.util.find_spec("torchio"), reason="no TorchIO")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Three patients with the LPS affine: an HGG with a tumour block, an HGG whose
    segmentation is empty, an LGG without a segmentation file."""
    tmp = tmp_path_factory.mktemp("dict")
    root = tmp / "c"
    for i, (cls, seg) in enumerate((("HGG", True), ("HGG", True), ("LGG", False))):
        pid = f"BraTS19_{cls}_00{i}_1"
        write_patient(root / cls / pid, pid, i, seg=seg, affine=LPS)
        if i == 0:
            seg = np.zeros(SHAPE, np.uint8)
            seg[TUMOUR] = 4
            write_nifti(root / cls / pid / f"{pid}_seg.nii.gz", seg, LPS)
    preprocessing_runner(PreprocessConfig(slices=SLICES))(root, tmp / "s.h5")
    return tmp / "s.h5"


def _world(affine, index) -> np.ndarray:
    return (np.asarray(affine, dtype=np.float64) @ np.r_[index, 1.0])[:3]


def _tumour_centre(mask) -> np.ndarray:
    """The tumour's centre of mass, in voxel indices of a (1, A, B, C) mask."""
    return np.argwhere(np.asarray(mask)[0] > 0).mean(axis=0)


def test_a_sample_holds_image_affine_label_id_and_mask(store):
    plain, ds = StoreDataset(store), StoreDataset(store, as_dict=True)
    with StoreReader(store) as reader:
        places = [reader.placement(i) for i in range(3)]
        masks = [reader.read_mask(i) for i in range(3)]
    for i in range(3):
        s = ds[i]
        assert set(s) == {"image", "affine", "affine_known", "label", "patient_id", "mask",
                          "has_mask"}  # fmt: skip
        assert torch.equal(torch.as_tensor(s["image"]), plain[i][0])
        assert s["label"] == plain[i][1] and s["patient_id"] == ds.patient_ids[i]
        assert s["affine"].dtype == torch.float64 and s["affine_known"]
        assert np.array_equal(s["affine"].numpy(), places[i].affine)
        assert s["mask"].shape == (1, SLICES, SHAPE[1], SHAPE[0]) and s["mask"].dtype == torch.uint8
        assert s["has_mask"] == (masks[i] is not None)
        expected = masks[i] if masks[i] is not None else np.zeros((SLICES, *SHAPE[1::-1]))
        assert np.array_equal(np.asarray(s["mask"])[0], expected)
    # the tumour lies in the world where the scan's own affine puts it
    s = ds[0]
    scan_centre = np.array([(t.start + t.stop - 1) / 2 for t in TUMOUR])
    assert np.allclose(_world(s["affine"], _tumour_centre(s["mask"])), _world(LPS, scan_centre))


def test_samples_batch_through_a_plain_dataloader_with_workers(store):
    batch = next(iter(DataLoader(StoreDataset(store, as_dict=True), batch_size=3, num_workers=2)))
    assert tuple(batch["image"].shape) == (3, 4, SLICES, SHAPE[1], SHAPE[0])
    assert tuple(batch["affine"].shape) == (3, 4, 4) and batch["label"].tolist() == [1, 1, 0]
    assert list(batch["patient_id"]) == StoreDataset(store).patient_ids


def test_a_transform_takes_the_whole_sample(store):
    ds = StoreDataset(store, as_dict=True, transform=lambda s: {**s, "image": s["image"] * 0})
    assert not torch.as_tensor(ds[0]["image"]).any() and ds[0]["label"] == 1


@needs_monai
def test_the_image_is_a_metatensor_that_monai_dictionary_transforms_reorient_and_flip(store):
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientationd, RandFlipd

    s = StoreDataset(store, as_dict=True)[0]
    assert isinstance(s["image"], MetaTensor) and isinstance(s["mask"], MetaTensor)
    assert torch.equal(s["image"].affine, s["affine"])
    keys = ["image", "mask"]
    ras = Orientationd(keys=keys, axcodes="RAS", labels=None)(s)
    import nibabel as nib

    assert "".join(nib.aff2axcodes(ras["image"].affine.numpy())) == "RAS"
    before = _world(s["affine"], _tumour_centre(s["mask"]))
    assert np.allclose(_world(ras["mask"].affine, _tumour_centre(ras["mask"])), before)
    flipped = Compose([Orientationd(keys=keys, axcodes="RAS", labels=None),
                       RandFlipd(keys=keys, prob=1.0, spatial_axis=0)])(s)  # fmt: skip
    assert torch.equal(flipped["image"].as_tensor(), ras["image"].as_tensor().flip(1))
    assert torch.equal(flipped["mask"].as_tensor(), ras["mask"].as_tensor().flip(1))
    assert flipped["label"] == 1 and flipped["patient_id"] == s["patient_id"]


@needs_monai
def test_a_monai_pipeline_over_the_dataset_batches_metatensors(store):
    from monai.data import DataLoader as MonaiLoader
    from monai.transforms import Compose, EnsureTyped, RandFlipd, ScaleIntensityd

    keys = ["image", "mask"]
    pipeline = Compose([EnsureTyped(keys=keys), ScaleIntensityd(keys="image"),
                        RandFlipd(keys=keys, prob=0.5, spatial_axis=2)])  # fmt: skip
    batch = next(iter(MonaiLoader(StoreDataset(store, as_dict=True, transform=pipeline),
                                  batch_size=3, num_workers=2)))  # fmt: skip
    assert tuple(batch["image"].shape) == (3, 4, SLICES, SHAPE[1], SHAPE[0])
    assert tuple(batch["image"].affine.shape) == (3, 4, 4)


@needs_monai
@pytest.mark.parametrize("wrap", [False, True], ids=["alone", "in-compose"])
def test_a_dictionary_transform_on_tuple_samples_is_refused_at_once(store, wrap):
    from monai.transforms import Compose, RandFlipd, ScaleIntensityd

    t = RandFlipd(keys="image", prob=1.0)
    t = Compose([ScaleIntensityd(keys="image"), t]) if wrap else t
    with pytest.raises(ConfigError, match=r"RandFlipd is a dictionary transform .* as_dict=True"):
        StoreDataset(store, transform=t)
    assert StoreDataset(store, transform=t, as_dict=True)[0]["label"] == 1


@needs_torchio
def test_torchio_subjects_from_samples_reorient_in_the_world(store):
    import torchio as tio

    def subject(s):
        plain = {k: s[k].as_subclass(torch.Tensor) for k in ("image", "mask")}
        return tio.Subject(
            image=tio.ScalarImage(tensor=plain["image"], affine=s["affine"].numpy()),
            mask=tio.LabelMap(tensor=plain["mask"], affine=s["affine"].numpy()),
            label=s["label"], patient_id=s["patient_id"],
        )  # fmt: skip

    ds = StoreDataset(store, as_dict=True)
    subjects = tio.SubjectsDataset([subject(s) for s in ds], transform=tio.ToCanonical())
    out, s = subjects[0], ds[0]
    assert out["image"].orientation == ("R", "A", "S") and out["label"] == 1
    before = _world(s["affine"], _tumour_centre(s["mask"]))
    assert np.allclose(_world(out["mask"].affine, _tumour_centre(out["mask"].data)), before)
