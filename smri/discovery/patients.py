"""Finding patients, their modality files and their labels in every supported input layout.

Layouts (checked in this order):

- BIDS: ``ROOT/sub-<label>[/ses-<label>]/anat/`` with ``participants.tsv`` (see `smri.bids`)
- a labels CSV given with ``--labels`` (``patient_id,label`` or BraTS 2020's ``name_mapping.csv``)
- BraTS 2020: ``ROOT/<pid>/<pid>_<modality>.nii[.gz]`` with ``ROOT/name_mapping.csv``
- class folders: ``ROOT/<CLASS>/<pid>/...`` for the names in ``--classes`` (BraTS 2018/2019:
  ``HGG``, ``LGG``), matched case-insensitively
- BraTS 2023 and later: ``ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w}.nii.gz``
  (any ``BraTS-<TAG>-NNNNN-NNN`` id) with a labels CSV; read as flair, t1, t1ce, t2. The last
  three digits are a timepoint: only the lowest usable one of each subject is kept

A modality file ends exactly in ``_<modality>.nii`` or ``_<modality>.nii.gz`` (case-insensitive),
so ``_t1`` never matches ``_t1ce``, or is a BraTS 2023 file ``<id>-<t2f|t1n|t1c|t2w>.nii[.gz]``;
a patient's segmentation (``_seg.nii[.gz]``, BraTS 2023 ``-seg``) is recorded beside its
modalities (`Patient.seg_files`) but is never one; any other file is ignored.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smri.errors import ConfigError, DataError, PatientError
from smri.files import check_regular

DEFAULT_MODALITIES = ("flair", "t1", "t1ce", "t2")
DEFAULT_CLASSES = {"LGG": 0, "HGG": 1}
NAME_MAPPING = "name_mapping.csv"
BRATS2020_ID_COLUMN = "BraTS_2020_subject_ID"
BRATS2020_GRADE_COLUMN = "Grade"
ID_COLUMNS = ("patient_id", "subject_id", "id", BRATS2020_ID_COLUMN)
LABEL_COLUMNS = ("label", "class", "grade", BRATS2020_GRADE_COLUMN)
UNLABELLED = -1
_NIFTI_SUFFIX = re.compile(r"_([A-Za-z0-9]+)\.nii(\.gz)?\Z", re.IGNORECASE)  # \Z: not before \n
# BraTS 2023 and later (GLI, MEN, MET, PED, SSA, ...): BraTS-GLI-00000-000-t1c.nii.gz
BRATS2023_ID = re.compile(r"BraTS-[A-Za-z]+-[0-9]{5}-[0-9]{3}\Z", re.IGNORECASE)
_BRATS2023_FILE = re.compile(
    r"(BraTS-[A-Za-z]+-[0-9]{5}-[0-9]{3})-([A-Za-z0-9]+)\.nii(\.gz)?\Z", re.IGNORECASE
)
SEG = "seg"  # the segmentation's name ending: `_seg.nii.gz`, BraTS 2023's `-seg.nii.gz`
BRATS2023_NAMES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": "seg"}
# Characters that break a one-line message (and can forge lines of output): controls such as
# newline, carriage return and escape, and the Unicode line and paragraph separators.
_LINE_BREAKING = ("Cc", "Zl", "Zp")


@dataclass(frozen=True)
class Patient:
    """One patient: id, label (0/1, or -1 when unknown), a file per modality in order, and the
    folder's segmentation files (none, one, or several: preprocessing uses exactly one)."""

    patient_id: str
    label: int
    files: tuple[Path, ...]
    folder: Path
    seg_files: tuple[Path, ...] = ()


@dataclass
class Discovery:
    """What was found under a root: usable patients (sorted by id) and the skipped ones."""

    root: Path
    layout: str
    patients: list[Patient] = field(default_factory=list)
    skipped: list[PatientError] = field(default_factory=list)


def parse_classes(text: str) -> dict[str, int]:
    """Parse ``LGG=0,HGG=1`` into ``{"LGG": 0, "HGG": 1}``; ConfigError on anything else."""
    classes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or value.strip() not in ("0", "1"):
            raise ConfigError(
                f"expected NAME=0,NAME=1 (e.g. LGG=0,HGG=1), got {text!r}", option="--classes"
            )
        classes[name.strip()] = int(value)
    if sorted(classes.values()) != [0, 1]:
        raise ConfigError(
            f"expected one class named for 0 and one for 1, got {text!r}", option="--classes"
        )
    return classes


def parse_modalities(text: str) -> tuple[str, ...]:
    """Parse ``flair,t1,t1ce,t2`` (the sequence order); ConfigError on empty or repeated names."""
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not names:
        raise ConfigError("expected at least one modality name", option="--modalities")
    bad = [n for n in names if not re.fullmatch(r"[a-z0-9]+", n)]
    if bad:
        raise ConfigError(
            f"modality names are letters and digits only, got {bad[0]!r}", option="--modalities"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"modality listed twice in {text!r}", option="--modalities")
    if "seg" in names:
        raise ConfigError("'seg' is the segmentation, not an image modality", option="--modalities")
    return names


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


def check_mapped_modalities(
    modalities: Sequence[str], names: dict[str, str], layout: str, files: str
) -> None:
    """ConfigError (--modalities) when a modality has no file type in a layout that renames
    them (BraTS 2023, BIDS): `names` maps the layout's file names to smri's."""
    known = [m for m in names.values() if m != "seg"]
    for m in modalities:
        if m not in known:
            raise ConfigError(
                f"{layout} files {files} are read as {', '.join(known)}; {m!r} is none of these",
                option="--modalities",
            )


def has_control_characters(name: str) -> bool:
    """Whether `name` holds a newline, another control character or a line separator, or
    bytes that are not UTF-8 (a patient id must be text a store and a CSV can hold)."""
    return name_problem(name) is not None


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a patient id or be named in a one-line message, or None."""
    if any(unicodedata.category(c) == "Cs" for c in name):  # os.fsdecode's escaped bytes
        return "is not valid UTF-8"
    if any(unicodedata.category(c) in _LINE_BREAKING for c in name):
        return "holds control characters"
    return None


def printable(name: str) -> str:
    """`name` with control characters and bytes that are not UTF-8 escaped (as repr shows
    them: ``Bad\\xff``), for one-line messages."""
    try:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "backslashreplace").decode("utf-8")
    if any(unicodedata.category(c) in _LINE_BREAKING for c in shown):
        return repr(shown)[1:-1]
    return shown


def patient_from_folder(
    folder: Path,
    modalities: Sequence[str],
    label: int = UNLABELLED,
    patient_id: str | None = None,
    *,
    parse: Callable[[str], tuple[str | None, str | None]] = parse_brats_name,
    owner: str | None = None,
    hint: Callable[[str], str] | None = None,
) -> Patient:
    """The modality files of one patient folder; PatientError when one is missing or doubled.

    `parse` reads a file name as (modality, owner id or None); a file naming an owner other
    than `owner` (default: the folder's name when it is a BraTS 2023 id) is an error, never
    silently read as this patient's. `hint` gives the expected name ending of a modality.
    A folder or modality file whose name holds control characters (a newline, say) is refused:
    the id would break every one-line message and CSV row it appears in.
    """
    folder = Path(folder)
    pid = patient_id or folder.name
    if owner is None and parse is parse_brats_name and BRATS2023_ID.match(folder.name):
        owner = folder.name
    hint = hint or (lambda m: _brats_hint(m, folder.name))
    if has_control_characters(pid):
        raise PatientError(
            printable(pid),
            f"folder name '{printable(pid)}' {name_problem(pid)}; rename the folder",
        )
    if not folder.is_dir():
        raise PatientError(pid, f"{folder} is not a folder")
    found: dict[str, list[Path]] = {m: [] for m in modalities}
    segs: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise PatientError(pid, f"cannot list {folder} ({exc.strerror})") from None
    for entry in entries:
        mod, named = parse(entry.name)
        if mod == SEG and not entry.name.startswith(".") and not has_control_characters(entry.name):
            if owner is None or named is None or named.lower() == owner.lower():
                segs.append(Path(entry.path))  # a seg named for another case is not this one's
            continue
        if mod in found and not entry.name.startswith("."):
            if has_control_characters(entry.name):
                raise PatientError(
                    pid,
                    f"file name '{printable(entry.name)}' {name_problem(entry.name)}; rename "
                    "the file",
                )
            if owner is not None and named is not None and named.lower() != owner.lower():
                raise PatientError(
                    pid, f"file {entry.name} in {folder} is named for {named}, not {owner}"
                )
            found[mod].append(Path(entry.path))
    missing = [m for m, files in found.items() if not files]
    if missing:
        raise PatientError(
            pid,
            f"no {', '.join(missing)} file in {folder} "
            f"(expected names ending {hint(missing[0])} or .nii.gz)",
        )
    doubled = {m: files for m, files in found.items() if len(files) > 1}
    if doubled:
        m, files = next(iter(doubled.items()))
        raise PatientError(
            pid, f"modality {m} present {len(files)} times: " + ", ".join(f.name for f in files)
        )
    return Patient(pid, label, tuple(found[m][0] for m in modalities), folder, tuple(segs))


def list_subfolders(path: Path) -> list[Path]:
    try:
        return sorted(
            (Path(e.path) for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")),
            key=lambda p: p.name,
        )
    except OSError as exc:
        raise DataError(f"{path}: cannot list folder ({exc.strerror})") from None


def read_labels_csv(path: Path, classes: dict[str, int]) -> dict[str, int]:
    """Patient id -> label from a CSV (label column: 0/1 or a class name)."""
    try:
        with open(check_regular(path), newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read labels CSV ({exc})") from None
    lower = {c.strip().lower(): c for c in columns if c}
    id_col = next((lower[c.lower()] for c in ID_COLUMNS if c.lower() in lower), None)
    label_col = next((lower[c.lower()] for c in LABEL_COLUMNS if c.lower() in lower), None)
    if id_col is None or label_col is None:
        raise DataError(
            f"{path}: labels CSV needs a patient id column ({', '.join(ID_COLUMNS)}) "
            f"and a label column ({', '.join(LABEL_COLUMNS)}); found columns "
            f"{', '.join(columns) or 'none'}"
        )
    by_name = {name.lower(): value for name, value in classes.items()}
    labels: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        pid = (row.get(id_col) or "").strip()
        raw = (row.get(label_col) or "").strip()
        if not pid:
            continue
        if raw in ("0", "1"):
            value = int(raw)
        elif raw.lower() in by_name:
            value = by_name[raw.lower()]
        else:
            raise DataError(
                f"{path}, line {line}: patient {pid} has label {raw!r}; expected 0, 1 "
                f"or a class name ({', '.join(classes)})"
            )
        if pid in labels and labels[pid] != value:
            raise DataError(
                f"{path}, line {line}: patient {pid} listed twice with different labels"
            )
        labels[pid] = value
    if not labels:
        raise DataError(f"{path}: labels CSV has no rows")
    return labels


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


@dataclass(frozen=True)
class BidsOptions:
    """How a BIDS dataset is read: the participants.tsv column holding the labels, the value
    meaning class 1 (others are 0; without it, 0/1 or class names), and the session to use."""

    label_column: str | None = None
    positive: str | None = None
    session: str | None = None


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

    DataError when `root` is unusable or holds no patients at all.
    """
    from smri.bids import discover_bids, is_bids

    root = Path(root)
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
    else:
        given = [f"--{k.replace('_', '-')}" for k, v in vars(bids).items() if v is not None]
        if given:
            raise ConfigError(
                f"{given[0]} reads a BIDS dataset (sub-*/anat/ folders and participants.tsv); "
                f"{root} is not one",
                option=given[0],
            )
        result = _discover_brats(
            root, subfolders, modalities, classes, labels_csv, allow_unlabelled
        )
    result.patients.sort(key=lambda p: p.patient_id)
    result.skipped.sort(key=lambda e: e.patient_id)
    if not result.patients and not result.skipped:
        raise DataError(
            f"{root}: no patient folders with {', '.join(modalities)} NIfTI files "
            f"found (layout: {result.layout})"
        )
    return result


def _discover_brats(
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
        result = Discovery(root, "class-folders")
        folders = [
            (pid_dir, label)
            for name, label in classes.items()
            if name.lower() in class_dirs
            for pid_dir in list_subfolders(class_dirs[name.lower()])
        ]
        _collect(folders, modalities, result)
    elif mapping is not None:
        labels = read_labels_csv(mapping, classes)
        if brats2023:
            layout = "brats2023"
        else:
            layout = "brats2020" if mapping.name == NAME_MAPPING else "labels-csv"
        result = Discovery(root, layout)
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


def modality_of_any(folder: Path, modalities: Sequence[str]) -> bool:
    """Whether `folder` holds at least one file of the given modalities."""
    try:
        return any(modality_of(e.name) in modalities for e in os.scandir(folder))
    except OSError:
        return False
