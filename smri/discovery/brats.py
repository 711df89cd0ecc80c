"""Patient-folder layouts: one folder per patient, its modality files named after it.

- class folders: ``ROOT/<CLASS>/<pid>/...`` for the names in ``--classes`` (BraTS 2018/2019:
  ``HGG``, ``LGG``, or any other pair of class names), matched case-insensitively
- a labels CSV given with ``--labels`` (``patient_id,label`` or BraTS 2020's ``name_mapping.csv``)
- BraTS 2020: ``ROOT/<pid>/<pid>_<modality>.nii[.gz]`` with ``ROOT/name_mapping.csv``
- BraTS 2023 and later: ``ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w}.nii.gz``
  (any ``BraTS-<TAG>-NNNNN-NNN`` id) with a labels CSV; read as flair, t1, t1ce, t2. The last
  three digits are a timepoint: only the lowest usable one of each subject is kept

A modality file ends exactly in ``_<modality>.nii`` or ``_<modality>.nii.gz`` (case-insensitive),
so ``_t1`` never matches ``_t1ce``, or is a BraTS 2023 file ``<id>-<t2f|t1n|t1c|t2w>.nii[.gz]``;
a patient's segmentation (``_seg.nii[.gz]``, BraTS 2023 ``-seg``) is recorded beside its
modalities (`Patient.seg_files`) but is never one; any other file is ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from smri.discovery.labels import read_labels_csv
from smri.discovery.patients import (
    UNLABELLED,
    Discovery,
    Patient,
    check_mapped_modalities,
    has_control_characters,
    list_subfolders,
    name_problem,
    printable,
    read_patient_folder,
)
from smri.errors import DataError, PatientError

NAME_MAPPING = "name_mapping.csv"
_NIFTI_SUFFIX = re.compile(r"_([A-Za-z0-9]+)\.nii(\.gz)?\Z", re.IGNORECASE)  # \Z: not before \n
# BraTS 2023 and later (GLI, MEN, MET, PED, SSA, ...): BraTS-GLI-00000-000-t1c.nii.gz
BRATS2023_ID = re.compile(r"BraTS-[A-Za-z]+-[0-9]{5}-[0-9]{3}\Z", re.IGNORECASE)
_BRATS2023_FILE = re.compile(
    r"(BraTS-[A-Za-z]+-[0-9]{5}-[0-9]{3})-([A-Za-z0-9]+)\.nii(\.gz)?\Z", re.IGNORECASE
)
BRATS2023_NAMES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": "seg"}


def modality_of(name: str) -> str | None:
    """The modality a file name carries (``BraTS_001_T1ce.nii.gz`` -> ``t1ce``,
    ``BraTS-GLI-00000-000-t1c.nii.gz`` -> ``t1ce``), else None."""
    return parse_brats_name(name)[0]


def parse_brats_name(name: str) -> tuple[str | None, str | None]:
    """(modality, patient id the name carries): the id only for BraTS 2023 names, where the
    folder must agree with it; ``(None, None)`` for a file that is no modality."""
    match = _BRATS2023_FILE.match(name)
    if match:
        return BRATS2023_NAMES.get(match.group(2).lower()), match.group(1)
    match = _NIFTI_SUFFIX.search(name)
    return (match.group(1).lower() if match else None), None


def _brats_hint(modality: str, folder_name: str) -> str:
    """The file name a BraTS folder is expected to hold for `modality`."""
    if BRATS2023_ID.match(folder_name):
        alias = {v: k for k, v in BRATS2023_NAMES.items()}.get(modality, modality)
        return f"-{alias}.nii"
    return f"_{modality}.nii"


def patient_from_folder(
    folder: Path, modalities: Sequence[str], label: int = UNLABELLED, patient_id: str | None = None
) -> Patient:
    """The modality files of one BraTS-style patient folder; PatientError when one is missing
    or doubled. In a folder named as a BraTS 2023 id, a file named for another id is an error,
    never silently read as this patient's."""
    folder = Path(folder)
    return read_patient_folder(
        folder,
        modalities,
        label,
        patient_id or folder.name,
        parse=parse_brats_name,
        owner=folder.name if BRATS2023_ID.match(folder.name) else None,
        hint=lambda m: _brats_hint(m, folder.name),
    )


def modality_of_any(folder: Path, modalities: Sequence[str]) -> bool:
    """Whether `folder` holds at least one file of the given modalities."""
    try:
        return any(modality_of(e.name) in modalities for e in os.scandir(folder))
    except OSError:
        return False


def _collect(folders: list[tuple[Path, int]], modalities: Sequence[str], result: Discovery) -> None:
    seen: dict[str, Path] = {}
    for folder, label in folders:
        pid = folder.name
        if has_control_characters(pid):
            result.skipped.append(
                PatientError(
                    printable(pid), f"folder name '{printable(pid)}' {name_problem(pid)}; rename it"
                )
            )
            continue
        if pid in seen:
            result.skipped.append(PatientError(pid, f"id found twice: {seen[pid]} and {folder}"))
            continue
        seen[pid] = folder
        try:
            result.patients.append(patient_from_folder(folder, modalities, label))
        except PatientError as exc:
            result.skipped.append(exc)


def discover_brats(
    root: Path,
    subfolders: list[Path],
    modalities: Sequence[str],
    classes: dict[str, int],
    labels_csv: Path | None,
    allow_unlabelled: bool,
) -> Discovery:
    """Class folders, BraTS 2020 with name_mapping.csv, BraTS 2023, or folders with a CSV."""
    mapping = labels_csv or (root / NAME_MAPPING if (root / NAME_MAPPING).is_file() else None)
    class_dirs = {d.name.lower(): d for d in subfolders}
    brats2023 = [d.name for d in subfolders if BRATS2023_ID.match(d.name)]
    if brats2023:
        check_mapped_modalities(
            modalities, BRATS2023_NAMES, "BraTS 2023", "<id>-{t2f,t1n,t1c,t2w}.nii.gz"
        )
    if mapping is None and any(name.lower() in class_dirs for name in classes):
        result = Discovery(root, "class-folders", classes=dict(classes))
        folders = [
            (pid_dir, label)
            for name, label in classes.items()
            if name.lower() in class_dirs
            for pid_dir in list_subfolders(class_dirs[name.lower()])
        ]
        _collect(folders, modalities, result)
    elif mapping is not None:
        labels, names = read_labels_csv(mapping, classes)
        if brats2023:
            layout = "brats2023"
        else:
            layout = "brats2020" if mapping.name == NAME_MAPPING else "labels-csv"
        result = Discovery(root, layout, classes=names)
        # Patient folders directly under root, or one level down (class folders with a CSV).
        candidates = {d.name: d for d in subfolders}
        for d in subfolders:
            if d.name.lower() in {c.lower() for c in classes}:
                candidates.update({p.name: p for p in list_subfolders(d)})
        folders = []
        for pid, folder in sorted(candidates.items()):
            if pid in labels:
                folders.append((folder, labels[pid]))
            elif allow_unlabelled and modality_of_any(folder, modalities):
                folders.append((folder, UNLABELLED))
            elif modality_of_any(folder, modalities):
                result.skipped.append(
                    PatientError(printable(pid), f"no label for this patient in {mapping}")
                )
        _collect(folders, modalities, result)
        absent = sorted(set(labels) - set(candidates))
        for pid in absent:
            result.skipped.append(
                PatientError(
                    printable(pid),
                    f"listed in {mapping.name} but no folder {printable(str(root / pid))}",
                )
            )
    elif allow_unlabelled:
        result = Discovery(root, "brats2023" if brats2023 else "unlabelled")
        _collect([(d, UNLABELLED) for d in subfolders], modalities, result)
    elif brats2023:
        raise DataError(
            f"{root}: BraTS 2023 layout (folders like {brats2023[0]}/) has no grade folders; "
            "give labels with --labels CSV (patient_id,label columns)"
        )
    else:
        names = ", ".join(f"{n}/" for n in classes)
        raise DataError(
            f"{root}: no class folders ({names}) and no {NAME_MAPPING}; give "
            "labels with --labels CSV or class folders with --classes"
        )
    _one_timepoint_per_subject(result)
    return result


def _one_timepoint_per_subject(result: Discovery) -> None:
    """Keep the lowest timepoint of each BraTS 2023 subject; skip the others with a reason.

    ``BraTS-GLI-00000-001`` is timepoint 001 of subject ``BraTS-GLI-00000``: two timepoints are
    not independent patients, and a patient-level split could put them on both sides.
    """
    kept: dict[str, str] = {}
    patients = []
    for patient in sorted(result.patients, key=lambda p: p.patient_id.lower()):
        pid = patient.patient_id
        subject = pid[:-4] if BRATS2023_ID.match(pid) else None
        if subject is None or subject.lower() not in kept:
            if subject is not None:
                kept[subject.lower()] = pid
            patients.append(patient)
            continue
        result.skipped.append(
            PatientError(
                pid,
                f"another timepoint of subject {subject}; kept {kept[subject.lower()]} "
                "(one timepoint per subject)",
            )
        )
    result.patients = patients
