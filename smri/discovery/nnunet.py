"""nnU-Net raw datasets and the Medical Segmentation Decathlon (MSD): a ``dataset.json`` beside
``imagesTr/`` (and ``imagesTs/``), each case's segmentation in ``labelsTr/``; the class labels
come from a CSV (``--labels``), since a segmentation dataset has none.

    Dataset501_Glioma/                                       nnU-Net (v2; v1 alike)
        dataset.json   "channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
        imagesTr/GLI_001_0000.nii.gz ... GLI_001_0003.nii.gz    one 3D file per channel
        imagesTs/GLI_101_0000.nii.gz ...
        labelsTr/GLI_001.nii.gz                                 the segmentation: the mask
    Task01_BrainTumour/                                      MSD
        dataset.json   "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
        imagesTr/BRATS_001.nii.gz                               one 4D file (X, Y, Z, modality)
        labelsTr/BRATS_001.nii.gz

A case's files carry a four-digit channel (``_0000``) in nnU-Net datasets (``channel_names``,
or ``modality`` with such files: nnU-Net v1), none in MSD's. The channel names map to smri's
modalities case-insensitively, ignoring anything but letters and digits (`smri_modality`);
a name not in MODALITY_NAMES is kept as it is, lower-cased (``ADC`` -> ``adc``), so
``--modalities`` can pick it. The patient id is the case name (``GLI_001``, ``BRATS_001``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from smri.discovery.labels import read_labels_csv
from smri.discovery.patients import (
    UNLABELLED,
    Discovery,
    Patient,
    name_problem,
    printable,
    read_json,
)
from smri.errors import ConfigError, DataError, PatientError

DATASET_JSON = "dataset.json"
IMAGE_FOLDERS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}  # images -> segmentations
# A channel name (lower case, letters and digits only) -> smri's modality name.
MODALITY_NAMES = {
    "flair": "flair", "t2flair": "flair", "t2f": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1wce": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
}  # fmt: skip
_CHANNEL_FILE = re.compile(r"(.+)_([0-9]{4})(\.nii(?:\.gz)?)\Z", re.IGNORECASE)
_NIFTI_FILE = re.compile(r"(.+?)(\.nii(?:\.gz)?)\Z", re.IGNORECASE)


def smri_modality(channel_name: str) -> str:
    """smri's modality for a dataset.json channel name: ``T1w`` -> ``t1``, ``t1gd`` ->
    ``t1ce``, ``FLAIR`` -> ``flair``; another name lower-cased, letters and digits only."""
    key = re.sub(r"[^a-z0-9]", "", channel_name.lower())
    return MODALITY_NAMES.get(key, key)


def is_segmentation_dataset(root: Path) -> bool:
    """Whether `root` holds a dataset.json and an imagesTr/ or imagesTs/ folder."""
    return (root / DATASET_JSON).is_file() and any((root / f).is_dir() for f in IMAGE_FOLDERS)


def read_channels(root: Path) -> tuple[dict[str, int], dict[int, str], str]:
    """dataset.json -> (smri modality -> channel index, channel index -> its name there, the
    key read: ``channel_names`` or ``modality``). DataError naming the file and the field."""
    path = root / DATASET_JSON
    data = read_json(path)
    ending = data.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or ending.lower() not in (".nii", ".nii.gz"):
        raise DataError(
            f"{path}: file_ending {printable(repr(ending))}; smri reads NIfTI (.nii, .nii.gz)"
        )
    key = next((k for k in ("channel_names", "modality") if k in data), None)
    channels = data.get(key) if key else None
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{path}: no channel_names (nnU-Net) or modality (MSD) mapping")
    names: dict[int, str] = {}
    for index, name in channels.items():
        if not (isinstance(index, str) and index.isdigit() and isinstance(name, str)):
            raise DataError(f'{path}: {key} maps channel numbers to names ("0": "FLAIR"), got '
                            f"{printable(repr(index))}: {printable(repr(name))}")  # fmt: skip
        names[int(index)] = name
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: {key} numbers the channels 0 to {len(names) - 1}, got "
                        f"{', '.join(map(str, sorted(names)))}")  # fmt: skip
    modalities: dict[str, int] = {}
    for index, name in sorted(names.items()):
        modality = smri_modality(name) or f"channel{index}"
        if modality in modalities:
            first = modalities[modality]
            raise DataError(
                f"{path}: channels {first} ({printable(names[first])}) and {index} "
                f"({printable(name)}) are both read as {modality}; rename one in {key}"
            )
        modalities[modality] = index
    return modalities, names, key  # type: ignore[return-value]


def _pick_channels(
    path: Path, modalities: Sequence[str], found: dict[str, int], names: dict[int, str], key: str
) -> list[int]:
    """The channel index of each modality asked for; ConfigError (--modalities) naming them."""
    missing = [m for m in modalities if m not in found]
    if missing:
        listed = ", ".join(f"{printable(names[i])} ({m})" for m, i in found.items())
        raise ConfigError(
            f"{path} {key}: {listed}; {missing[0]!r} is none of these (choose with "
            f"--modalities, e.g. --modalities {','.join(found)})",
            option="--modalities",
        )
    return [found[m] for m in modalities]


def _scan(folder: Path) -> list[str]:
    """The NIfTI file names of an images folder, sorted; hidden ones (macOS ``._*``) left out."""
    try:
        names = [e.name for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror})") from None
    return sorted(n for n in names if _NIFTI_FILE.match(n))


def _segmentation(root: Path, images: str, case: str) -> tuple[Path, ...]:
    """The case's segmentation in labelsTr/ (labelsTs/ for imagesTs/), if there is one."""
    folder = root / IMAGE_FOLDERS[images]
    found = [folder / f"{case}{ext}" for ext in (".nii.gz", ".nii")]
    return tuple(p for p in found if p.is_file())


LabelOf = Callable[[str, str], "int | None"]  # (case, images folder) -> label, None: skip it


def _channel_cases(
    root: Path, images: str, channels: list[int], label_of: LabelOf, result: Discovery
) -> list[Patient]:
    """nnU-Net: each case's files ``<case>_<channel:04d>.nii[.gz]`` in the channels' order."""
    folder = root / images
    by_case: dict[str, dict[int, list[Path]]] = {}
    for name in _scan(folder):
        match = _CHANNEL_FILE.match(name)
        if match:
            files = by_case.setdefault(match.group(1), {})
            files.setdefault(int(match.group(2)), []).append(folder / name)
    patients = []
    for case, files in by_case.items():
        label = label_of(case, images)
        if label is None:
            continue
        try:
            chosen = []
            for index in channels:
                paths = files.get(index, [])
                if not paths:
                    raise PatientError(case, f"no channel {index:04d} file in {folder} "
                                       f"(expected {case}_{index:04d}.nii.gz or .nii)")  # fmt: skip
                if len(paths) > 1:
                    raise PatientError(case, f"channel {index:04d} present {len(paths)} times: "
                                       + ", ".join(p.name for p in paths))  # fmt: skip
                chosen.append(paths[0])
        except PatientError as exc:
            result.skipped.append(exc)
            continue
        patients.append(Patient(case, label, tuple(chosen), folder,
                                _segmentation(root, images, case)))  # fmt: skip
    return patients


def _volume_cases(
    root: Path, images: str, channels: list[int], label_of: LabelOf, result: Discovery
) -> list[Patient]:
    """MSD: one 4D file ``<case>.nii[.gz]`` per case, its modalities on the fourth axis
    (`channels` empty: a single-modality dataset, whose files are 3D)."""
    folder = root / images
    by_case: dict[str, list[Path]] = {}
    for name in _scan(folder):
        by_case.setdefault(_NIFTI_FILE.match(name).group(1), []).append(folder / name)  # type: ignore[union-attr]
    patients = []
    for case, files in by_case.items():
        label = label_of(case, images)
        if label is None:
            continue
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            result.skipped.append(PatientError(case, f"{len(files)} image files: {names}"))
            continue
        patients.append(Patient(case, label, (files[0],) * max(len(channels), 1), folder,
                                _segmentation(root, images, case), tuple(channels)))  # fmt: skip
    return patients


def discover_segmentation_dataset(
    root: Path,
    modalities: Sequence[str],
    classes: dict[str, int],
    labels_csv: Path | None,
    allow_unlabelled: bool,
) -> Discovery:
    """Every case of an nnU-Net raw or MSD dataset (imagesTr/, then imagesTs/) with its label
    from `labels_csv`; cases that cannot be used, with why."""
    found, names, key = read_channels(root)
    channels = _pick_channels(root / DATASET_JSON, modalities, found, names, key)
    folders = [f for f in IMAGE_FOLDERS if (root / f).is_dir()]
    per_channel = key == "channel_names" or any(
        (match := _CHANNEL_FILE.match(n)) is not None and match.group(2) == "0000"
        for f in folders
        for n in _scan(root / f)
    )
    if labels_csv is None and not allow_unlabelled:
        kind = "nnU-Net" if per_channel else "Medical Segmentation Decathlon"
        raise DataError(
            f"{root}: {kind} dataset ({DATASET_JSON}, {'/, '.join(folders)}/): its labels are "
            "segmentations; give the class of each case with --labels CSV (patient_id,label; "
            "ids are case names)"
        )
    labels, names_of_classes = (
        read_labels_csv(labels_csv, classes) if labels_csv is not None else ({}, {})
    )
    result = Discovery(root, "nnunet" if per_channel else "msd")
    if names_of_classes:
        result.classes = names_of_classes
    seen: dict[str, str] = {}

    def label_of(case: str, images: str) -> int | None:
        """The case's label; None (and a reason in `result.skipped`) when it is not usable."""
        problem = name_problem(case)
        if problem is not None:
            result.skipped.append(PatientError(printable(case), f"case name {problem}"))
            return None
        if case in seen:
            result.skipped.append(PatientError(case, f"case found twice: in {seen[case]}/ too"))
            return None
        seen[case] = images
        if case in labels:
            return labels[case]
        if allow_unlabelled:
            return UNLABELLED
        result.skipped.append(PatientError(case, f"no label for this case in {labels_csv}"))
        return None

    for images in folders:
        if per_channel:
            result.patients += _channel_cases(root, images, channels, label_of, result)
        else:  # a single-modality dataset's files are 3D: streamed, not loaded whole
            picked = channels if len(names) > 1 else []
            result.patients += _volume_cases(root, images, picked, label_of, result)
    for pid in sorted(set(labels) - set(seen)):
        result.skipped.append(
            PatientError(
                printable(pid),
                f"listed in {labels_csv.name} but no case {printable(pid)} in "  # type: ignore[union-attr]
                f"{'/ or '.join(folders)}/",
            )
        )
    return result
