"""nnU-Net raw and Medical Segmentation Decathlon datasets, built with their real file names:
discovery, the channel names, their quirks, and `smri preprocess` checked against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.discovery import BidsOptions, discover
from smri.discovery.nnunet import smri_modality
from smri.errors import ConfigError, DataError
from smri.store import StoreReader
from tests.helpers.nifti import MODALITIES, expected_images, patient_volumes, write_nifti

NNUNET_CHANNELS = {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # Task01_BrainTumour's


def tumour(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """A segmentation with BraTS-like labels 1, 2 and 3 in a box."""
    seg = np.zeros(shape, np.uint8)
    x, y, z = 4 + seed % 5, 5, 12 + seed % 9
    seg[x : x + 6, y : y + 8, z : z + 10] = 2
    seg[x + 1 : x + 4, y + 2 : y + 5, z + 2 : z + 6] = 3
    seg[x + 2, y + 3, z + 3] = 1
    return seg


def nnunet_dataset(
    root: Path,
    train: list[str],
    test: list[str] = (),
    channels: dict[str, str] = NNUNET_CHANNELS,
    key: str = "channel_names",
) -> dict[str, dict]:
    """``DatasetXXX/``: dataset.json, ``imagesTr/<case>_000K.nii.gz`` per channel,
    ``labelsTr/<case>.nii.gz``, and ``imagesTs/`` cases without labels; returns the volumes
    (by smri modality) and segmentation of each case."""
    root.mkdir(parents=True)
    meta = {key: channels, "labels": {"background": 0, "edema": 1, "non-enhancing": 2,
            "enhancing": 3}, "numTraining": len(train), "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    truth = {}
    for i, case in enumerate([*train, *test]):
        vols = patient_volumes(i)
        images = "imagesTr" if case in train else "imagesTs"
        for index, name in channels.items():
            modality = smri_modality(name)
            data = vols.get(modality, vols["t1"] + 7 * int(index))
            vols[modality] = data
            write_nifti(root / images / f"{case}_{int(index):04d}.nii.gz", data)
        seg = tumour(i, vols["t1"].shape)
        if case in train:
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", seg)
        truth[case] = {"vols": vols, "seg": seg if case in train else None}
    return truth


def msd_dataset(root: Path, train: list[str], test: list[str] = ()) -> dict[str, dict]:
    """``TaskXX_Name/``: dataset.json with ``modality``, ``imagesTr/<case>.nii.gz`` one 4D file
    (modalities on the fourth axis, in dataset.json's order), ``labelsTr/<case>.nii.gz``, and
    the macOS ``._`` files MSD's archives carry."""
    root.mkdir(parents=True)
    meta = {"name": "BRATS", "tensorImageSize": "4D", "modality": MSD_MODALITY,
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                       "3": "enhancing tumour"}, "numTraining": len(train),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                         for c in train],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test]}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    truth = {}
    for i, case in enumerate([*train, *test]):
        vols = patient_volumes(20 + i)
        images = "imagesTr" if case in train else "imagesTs"
        stacked = np.stack([vols[m] for m in MODALITIES], axis=-1)  # FLAIR, T1w, t1gd, T2w
        write_nifti(root / images / f"{case}.nii.gz", stacked)
        (root / images / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        seg = tumour(i, vols["t1"].shape)
        if case in train:
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", seg)
        truth[case] = {"vols": vols, "seg": seg if case in train else None}
    return truth


def labels_csv(path: Path, labels: dict[str, int]) -> Path:
    path.write_text("patient_id,label\n" + "".join(f"{p},{v}\n" for p, v in labels.items()))
    return path


def preprocess(root: Path, out: Path, *extra: str):
    args = ["preprocess", str(root), str(out), "--slices", "16", "-j", "1", *extra]
    return CliRunner().invoke(main, args)


def expected_mask(seg: np.ndarray, slices: int = 16) -> np.ndarray:
    start = (seg.shape[2] - slices) // 2
    return seg[:, :, start : start + slices].T


# ---------------------------------------------------------------------------- channel names
@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("FLAIR", "flair"), ("T2-FLAIR", "flair"), ("t2f", "flair"),
        ("T1", "t1"), ("T1w", "t1"), ("t1n", "t1"),
        ("t1gd", "t1ce"), ("T1ce", "t1ce"), ("T1-CE", "t1ce"), ("t1c", "t1ce"),
        ("T2", "t2"), ("T2w", "t2"),
        ("ADC", "adc"), ("noNorm", "nonorm"), ("CT", "ct"),
    ],
)  # fmt: skip
def test_channel_names_map_to_smris_modalities(name, modality):
    assert smri_modality(name) == modality


# ----------------------------------------------------------------------------------- nnU-Net
def test_preprocess_an_nnunet_raw_dataset(tmp_path):
    root = tmp_path / "nnUNet_raw" / "Dataset501_Glioma"
    truth = nnunet_dataset(root, ["GLI_001", "GLI_002", "GLI_003"], ["GLI_101"])
    labels = labels_csv(tmp_path / "l.csv", {"GLI_002": 1, "GLI_001": 0, "GLI_003": 1,
                                             "GLI_101": 0})  # fmt: skip
    found = discover(root, labels_csv=labels)
    assert (found.layout, found.classes, found.skipped) == ("nnunet", {"0": 0, "1": 1}, [])
    first = found.patients[0]
    assert [f.name for f in first.files] == [f"GLI_001_{k:04d}.nii.gz" for k in range(4)]
    assert (first.seg_files, first.channels) == ((root / "labelsTr" / "GLI_001.nii.gz",), ())
    out = tmp_path / "n.h5"
    result = preprocess(root, out, "--labels", str(labels))
    assert result.exit_code == 0, result.output
    assert f"wrote 4 patients (class 1: 2, class 0: 2) to {out}; skipped 0;" in result.output
    with StoreReader(out) as reader:
        assert reader.patient_ids == ["GLI_001", "GLI_002", "GLI_003", "GLI_101"]
        assert reader.labels.tolist() == [0, 1, 1, 0]
        assert reader.info.config["layout"] == "nnunet"
        for i, pid in enumerate(reader.patient_ids):
            assert np.array_equal(reader.read(i), expected_images(truth[pid]["vols"]))
            seg = truth[pid]["seg"]
            if seg is None:  # imagesTs: no segmentation
                assert reader.read_mask(i) is None
            else:
                assert np.array_equal(reader.read_mask(i), expected_mask(seg))
        assert reader.meta(0)["source_files"][3] == "imagesTr/GLI_001_0003.nii.gz"
    # --modalities picks channels by smri's names, in its order
    result = preprocess(root, out, "--labels", str(labels), "--modalities", "t2,flair",
                        "--overwrite", "--no-masks")  # fmt: skip
    assert result.exit_code == 0, result.output
    with StoreReader(out) as reader:
        vols = truth["GLI_003"]["vols"]
        want = expected_images(vols)[[3, 0]]
        assert np.array_equal(reader.read(reader.patient_ids.index("GLI_003")), want)


def test_other_channels_are_chosen_with_modalities(tmp_path):
    """Prostate (nnU-Net's Dataset005): T2 and ADC; the default four are refused, naming them."""
    root = tmp_path / "Dataset005_Prostate"
    truth = nnunet_dataset(root, ["prostate_00", "prostate_01"], channels={"0": "T2", "1": "ADC"})
    labels = labels_csv(tmp_path / "l.csv", {"prostate_00": 1, "prostate_01": 0})
    with pytest.raises(ConfigError) as err:
        discover(root, labels_csv=labels)
    assert err.value.option == "--modalities"
    assert str(err.value) == (
        f"{root / 'dataset.json'} channel_names: T2 (t2), ADC (adc); 'flair' is none of these "
        "(choose with --modalities, e.g. --modalities t2,adc)"
    )
    out = tmp_path / "p.h5"
    result = preprocess(root, out, "--labels", str(labels), "--modalities", "adc,t2")
    assert result.exit_code == 0, result.output
    with StoreReader(out) as reader:
        assert reader.info.modalities == ("adc", "t2")
        vols = truth["prostate_01"]["vols"]
        adc = vols["adc"].astype(np.float32)
        adc = (adc - adc.min()) / (adc.max() - adc.min() + 1e-8)
        assert np.array_equal(reader.read(1)[0], adc[:, :, 12:28].T.astype(np.float16))


def test_nnunet_v1_modality_key_with_channel_files(tmp_path):
    root = tmp_path / "Task001_BrainTumour"  # nnU-Net v1: MSD's key, one file per channel
    nnunet_dataset(root, ["BRATS_001"], channels=MSD_MODALITY, key="modality")
    found = discover(root, labels_csv=labels_csv(tmp_path / "l.csv", {"BRATS_001": 1}))
    assert found.layout == "nnunet"
    assert [f.name for f in found.patients[0].files] == [
        "BRATS_001_0000.nii.gz", "BRATS_001_0001.nii.gz", "BRATS_001_0002.nii.gz",
        "BRATS_001_0003.nii.gz",
    ]  # fmt: skip


def test_nnunet_quirks_are_reasons(tmp_path):
    root = tmp_path / "Dataset502_Quirks"
    nnunet_dataset(root, ["A_001", "A_002", "A_003", "A_004"], ["A_005"])
    for k in range(4):  # a case in imagesTs/ too
        (root / "imagesTs" / f"A_004_{k:04d}.nii.gz").write_bytes(b"")
    (root / "imagesTr" / "A_002_0002.nii.gz").unlink()  # a channel missing
    (root / "imagesTr" / "A_003_0001.nii").write_bytes(b"")  # a channel twice
    labels = labels_csv(tmp_path / "l.csv", {"A_001": 1, "A_002": 0, "A_003": 1, "A_004": 0,
                                             "A_009": 1})  # fmt: skip
    found = discover(root, labels_csv=labels)
    assert [p.patient_id for p in found.patients] == ["A_001", "A_004"]
    assert [str(e) for e in found.skipped] == [
        f"patient A_002: no channel 0002 file in {root / 'imagesTr'} (expected "
        "A_002_0002.nii.gz or .nii)",
        "patient A_003: channel 0001 present 2 times: A_003_0001.nii, A_003_0001.nii.gz",
        "patient A_004: case found twice: in imagesTr/ too",
        f"patient A_005: no label for this case in {labels}",
        "patient A_009: listed in l.csv but no case A_009 in imagesTr/ or imagesTs/",
    ]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"labels": {}}, "no channel_names (nnU-Net) or modality (MSD) mapping"),
        ({"channel_names": ["FLAIR"]}, "no channel_names (nnU-Net) or modality (MSD) mapping"),
        ({"channel_names": {"0": "T1", "2": "T2"}}, "channel_names numbers the channels 0 to 1, "
         "got 0, 2"),
        ({"channel_names": {"0": "T1", "1": "T1w"}}, "channels 0 (T1) and 1 (T1w) are both read "
         "as t1; rename one in channel_names"),
        ({"channel_names": {"zero": "T1"}}, 'channel_names maps channel numbers to names ("0": '
         "\"FLAIR\"), got 'zero': 'T1'"),
        ({"channel_names": {"0": "T1"}, "file_ending": ".png"}, "file_ending '.png'; smri "
         "reads NIfTI (.nii, .nii.gz)"),
    ],
)  # fmt: skip
def test_dataset_json_problems_name_the_file(tmp_path, meta, message):
    root = tmp_path / "Dataset503_Bad"
    nnunet_dataset(root, ["B_001"])
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as err:
        discover(root, labels_csv=labels_csv(tmp_path / "l.csv", {"B_001": 1}))
    assert str(err.value) == f"{root / 'dataset.json'}: {message}"


def test_where_an_nnunet_dataset_needs_a_labels_csv_or_its_folder(tmp_path):
    root = tmp_path / "Dataset504_NoLabels"
    nnunet_dataset(root, ["C_001"])
    with pytest.raises(DataError) as err:
        discover(root)
    assert str(err.value) == (
        f"{root}: nnU-Net dataset (dataset.json, imagesTr/): its labels are segmentations; "
        "give the class of each case with --labels CSV (patient_id,label; ids are case names)"
    )
    with pytest.raises(DataError) as err:
        discover(root / "imagesTr")
    assert str(err.value) == (
        f"{root / 'imagesTr'}: the images of an nnU-Net or MSD dataset; give the dataset's "
        f"folder {root} (the one holding dataset.json)"
    )
    with pytest.raises(ConfigError, match=r"^--label-column reads a BIDS dataset"):
        discover(root, bids=BidsOptions(label_column="group"))
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset.json: not valid JSON \(Expecting"):
        discover(root, labels_csv=labels_csv(tmp_path / "l.csv", {"C_001": 1}))


# ---------------------------------------------------------------------------------------- MSD
def test_preprocess_an_msd_dataset(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    truth = msd_dataset(root, ["BRATS_001", "BRATS_002", "BRATS_003"], ["BRATS_485"])
    labels = labels_csv(tmp_path / "l.csv", {"BRATS_001": 1, "BRATS_002": 0, "BRATS_003": 1,
                                             "BRATS_485": 1})  # fmt: skip
    found = discover(root, labels_csv=labels)
    assert (found.layout, found.skipped) == ("msd", [])  # the ._ files are not cases
    first = found.patients[0]
    assert first.files == (root / "imagesTr" / "BRATS_001.nii.gz",) * 4
    assert first.channels == (0, 1, 2, 3)
    out = tmp_path / "m.h5"
    result = preprocess(root, out, "--labels", str(labels))
    assert result.exit_code == 0, result.output
    assert f"wrote 4 patients (class 1: 3, class 0: 1) to {out}; skipped 0;" in result.output
    with StoreReader(out) as reader:
        assert reader.patient_ids == ["BRATS_001", "BRATS_002", "BRATS_003", "BRATS_485"]
        assert reader.info.config["layout"] == "msd"
        for i, pid in enumerate(reader.patient_ids):
            vols = truth[pid]["vols"]
            assert np.array_equal(reader.read(i), expected_images(vols))
            meta = reader.meta(i)
            assert meta["intensity_min"] == [float(vols[m].min()) for m in MODALITIES]
            assert meta["intensity_max"] == [float(vols[m].max()) for m in MODALITIES]
            seg = truth[pid]["seg"]
            mask = reader.read_mask(i)
            assert mask is None if seg is None else np.array_equal(mask, expected_mask(seg))
    # FLAIR, T1w, t1gd, T2w are flair, t1, t1ce, t2: --modalities takes smri's names
    result = preprocess(root, out, "--labels", str(labels), "--modalities", "t1ce,flair",
                        "--overwrite", "--dtype", "float32")  # fmt: skip
    assert result.exit_code == 0, result.output
    with StoreReader(out) as reader:
        vols = truth["BRATS_002"]["vols"]
        want = expected_images(vols, dtype="float32")[[2, 0]]
        assert np.array_equal(reader.read(1), want)


def test_msd_quirks_are_reasons(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    msd_dataset(root, ["BRATS_001", "BRATS_002"])
    write_nifti(root / "imagesTr" / "BRATS_002.nii", np.zeros((2, 2, 2, 4), np.int16))
    flat = patient_volumes(0)["t1"]  # a 3D file where dataset.json promises four modalities
    write_nifti(root / "imagesTr" / "BRATS_003.nii.gz", flat)
    labels = labels_csv(tmp_path / "l.csv", {"BRATS_001": 1, "BRATS_002": 0, "BRATS_003": 1})
    found = discover(root, labels_csv=labels)
    assert [str(e) for e in found.skipped] == [
        "patient BRATS_002: 2 image files: BRATS_002.nii, BRATS_002.nii.gz",
    ]
    out = tmp_path / "m.h5"
    result = preprocess(root, out, "--labels", str(labels))
    assert result.exit_code == 0, result.output
    assert (
        f"skipping patient BRATS_003: {root / 'imagesTr' / 'BRATS_003.nii.gz'}: holds 1 volume "
        "along its fourth axis, no volume 1 (counted from 0) for its modality 2"
    ) in result.output
