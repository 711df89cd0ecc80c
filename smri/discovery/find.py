"""Finding the patients under an input folder, whatever its layout, and reading one raw patient.

Layouts (checked in this order):

- BIDS: ``ROOT/sub-<label>[/ses-<label>]/anat/`` with ``participants.tsv``
  (`smri.discovery.bids`)
- nnU-Net raw and the Medical Segmentation Decathlon: ``ROOT/dataset.json`` with
  ``ROOT/imagesTr/`` (`smri.discovery.nnunet`), labels from a CSV
- patient folders (`smri.discovery.brats`): a labels CSV given with ``--labels``, BraTS 2020's
  ``name_mapping.csv``, class folders (``--classes``; BraTS 2018/2019: ``HGG``, ``LGG``), or
  BraTS 2023 and later (``BraTS-GLI-00000-000/``) with a labels CSV
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from smri.discovery.bids import (
    BidsOptions,
    discover_bids,
    is_bids,
    is_session,
    is_subject,
    session_patient,
    subject_patient,
)
from smri.discovery.brats import discover_brats, patient_from_folder
from smri.discovery.nnunet import (
    DATASET_JSON,
    IMAGE_FOLDERS,
    discover_segmentation_dataset,
    is_segmentation_dataset,
)
from smri.discovery.patients import (
    DEFAULT_CLASSES,
    DEFAULT_MODALITIES,
    UNLABELLED,
    Discovery,
    Patient,
    list_subfolders,
)
from smri.errors import ConfigError, DataError


def discover(
    root: Path,
    *,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    classes: dict[str, int] | None = None,
    labels_csv: Path | None = None,
    allow_unlabelled: bool = False,
    bids: BidsOptions | None = None,
) -> Discovery:
    """Find every patient under `root`, in sorted id order, with the reasons for skipped ones.

    `classes` names the classes; None: the layout's names (HGG/LGG class folders or grades),
    else the label column's own values (``"0"``, ``"1"``), in ``Discovery.classes``. Names
    in a label column are read with `classes` (None: ``DEFAULT_CLASSES``, BraTS grades).
    DataError when `root` is unusable or holds no patients at all.
    """
    root = Path(root)
    named = dict(classes) if classes else None
    classes = dict(classes or DEFAULT_CLASSES)
    bids = bids or BidsOptions()
    if not root.exists():
        raise DataError(f"{root}: input folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: is a file; expected a folder of patient folders")
    subfolders = list_subfolders(root)
    if is_bids(root, subfolders):
        result = discover_bids(
            root, subfolders, modalities, classes, labels_csv, bids, allow_unlabelled
        )
    elif root.name in IMAGE_FOLDERS and (root.parent / DATASET_JSON).is_file():
        raise DataError(
            f"{root}: the images of an nnU-Net or MSD dataset; give the dataset's folder "
            f"{root.parent} (the one holding {DATASET_JSON})"
        )
    else:
        given = [f"--{k.replace('_', '-')}" for k, v in vars(bids).items() if v not in (None, ())]
        if given:
            raise ConfigError(
                f"{given[0]} reads a BIDS dataset (sub-*/anat/ folders and participants.tsv); "
                f"{root} is not one",
                option=given[0],
            )
        if is_segmentation_dataset(root):
            result = discover_segmentation_dataset(
                root, modalities, classes, labels_csv, allow_unlabelled
            )
        else:
            result = discover_brats(
                root, subfolders, modalities, classes, labels_csv, allow_unlabelled
            )
    if named is not None:
        result.classes = named
    result.patients.sort(key=lambda p: p.patient_id)
    result.skipped.sort(key=lambda e: e.patient_id)
    if not result.patients and not result.skipped:
        raise DataError(
            f"{root}: no patient folders with {', '.join(modalities)} NIfTI files "
            f"found (layout: {result.layout})"
        )
    return result


def raw_patient(folder: Path, modalities: Sequence[str]) -> Patient:
    """One raw patient folder for `smri predict`: a BIDS subject (``sub-01``, one session) or
    session (``sub-01/ses-02``, id ``sub-01_ses-02``), else a BraTS-style folder."""
    folder = Path(folder)
    if is_subject(folder):
        return subject_patient(folder, modalities, UNLABELLED)
    if is_session(folder):
        return session_patient(folder, modalities, UNLABELLED)
    return patient_from_folder(folder, modalities)
