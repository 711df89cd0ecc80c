"""The vocabulary every input layout shares: a patient, what discovery found, parsing of the
class and modality options, the names an id may carry, and reading one patient's folder.

Nothing here knows a layout: how a file name is read (BraTS, BIDS) is given by the caller.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smri.errors import ConfigError, DataError, PatientError
from smri.files import check_regular
from smri.text import has_control_characters, name_problem, printable

DEFAULT_MODALITIES = ("flair", "t1", "t1ce", "t2")
DEFAULT_CLASSES = {"LGG": 0, "HGG": 1}  # BraTS grades: class folders and a Grade column
NEUTRAL_CLASSES = {"0": 0, "1": 1}  # a 0/1 label column's own values
UNLABELLED = -1
SEG = "seg"  # the segmentation's name ending: `_seg.nii.gz`, BraTS 2023's `-seg.nii.gz`
MAX_JSON_BYTES = 16 << 20  # dataset.json, filter files: MSD's largest lists ~1,300 cases in 200 KB


@dataclass(frozen=True)
class Patient:
    """One patient: id, label (0/1, or -1 when unknown), a file per modality in order, and the
    folder's segmentation files (none, one, or several: preprocessing uses exactly one).

    `channels`, when given, is each modality's index on the fourth axis of its file (MSD's
    4D images: one file, several modalities); empty: every file is one 3D volume.
    """

    patient_id: str
    label: int
    files: tuple[Path, ...]
    folder: Path
    seg_files: tuple[Path, ...] = ()
    channels: tuple[int, ...] = ()


@dataclass
class Discovery:
    """What was found under a root: usable patients (sorted by id), the skipped ones, and the
    class names: those given (``--classes``), else what the layout says (HGG/LGG folders or
    grades), else the label column's own values (``"0"``, ``"1"``)."""

    root: Path
    layout: str
    patients: list[Patient] = field(default_factory=list)
    skipped: list[PatientError] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=lambda: dict(NEUTRAL_CLASSES))


def column_classes(by_name: bool, classes: dict[str, int]) -> dict[str, int]:
    """The class names a label column gives: `classes` when its values are class names (BraTS
    grades HGG/LGG, or ``--classes`` names), else its own values ``"0"`` and ``"1"``."""
    return dict(classes) if by_name else dict(NEUTRAL_CLASSES)


def class_counts_text(counts: dict[str, int]) -> str:
    """``HGG 8, LGG 7``; a bare number as name reads ``class 1: 8, class 0: 7``."""
    return ", ".join(f"class {k}: {n}" if k.isdigit() else f"{k} {n}" for k, n in counts.items())


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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file of at most MAX_JSON_BYTES; DataError naming the file."""
    try:
        with open(check_regular(path), "rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise DataError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a file smri reads")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def list_subfolders(path: Path) -> list[Path]:
    """The folders in `path` (not hidden), sorted by name; an entry that cannot be followed
    (a symbolic link loop, no permission) is listed too, so that reading it skips that one
    patient with the reason instead of losing the listing, and the cohort with it."""
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot list folder ({exc.strerror})") from None
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                found.append(Path(entry.path))
        except OSError:  # ELOOP, EACCES: is_dir raises for these (a dangling link is False)
            found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.name)


def check_followable(folder: Path, patient_id: str) -> None:
    """PatientError naming `folder` when its path cannot be followed: a symbolic link loop
    (ELOOP) or no permission. That patient is skipped with the reason; the others go on."""
    try:
        os.stat(folder)
    except FileNotFoundError:
        return  # missing: the caller says what it expected there
    except OSError as exc:
        raise PatientError(patient_id, f"cannot read {folder} ({exc.strerror})") from None


class Chooser(Protocol):
    """How a layout chooses among several files of one modality (BIDS's entity filters)."""

    name: str  # what does the choosing, for messages: "--bids-filter"

    def keeps(self, modality: str, file_name: str) -> bool:
        """Whether the file `file_name` of `modality` is kept."""

    def hint(self, modality: str, file_names: list[str]) -> str:
        """What to add to the message naming files still too many: how to choose one."""


def read_patient_folder(
    folder: Path,
    modalities: Sequence[str],
    label: int,
    patient_id: str,
    *,
    parse: Callable[[str], tuple[str | None, str | None]],
    owner: str | None,
    hint: Callable[[str], str],
    choose: Chooser | None = None,
) -> Patient:
    """The modality files of one patient folder; PatientError when one is missing or doubled.

    `parse` reads a file name as (modality, owner id or None); a file naming an owner other
    than `owner` is an error, never silently read as this patient's. `hint` gives the expected
    name ending of a modality. `choose`, when given, keeps some files of a modality and says
    how to choose among those left (BIDS's entity filters). A folder or modality file whose
    name holds control characters (a newline, say) is refused: the id would break every
    one-line message and CSV row it appears in.
    """
    folder = Path(folder)
    pid = patient_id
    if has_control_characters(pid):
        raise PatientError(
            printable(pid),
            f"folder name '{printable(pid)}' {name_problem(pid)}; rename the folder",
        )
    check_followable(folder, pid)
    if not folder.is_dir():
        raise PatientError(pid, f"{folder} is not a folder")
    found: dict[str, list[Path]] = {m: [] for m in modalities}
    left_out: dict[str, list[str]] = {m: [] for m in modalities}  # by `choose`
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
            if choose is not None and not choose.keeps(mod, entry.name):
                left_out[mod].append(entry.name)
                continue
            found[mod].append(Path(entry.path))
    missing = [m for m, files in found.items() if not files]
    if missing and choose is not None and left_out[missing[0]]:
        m = missing[0]
        raise PatientError(
            pid, f"no {m} file in {folder} passes {choose.name} (left out: "
            f"{', '.join(left_out[m])})",
        )  # fmt: skip
    if missing:
        raise PatientError(
            pid,
            f"no {', '.join(missing)} file in {folder} "
            f"(expected names ending {hint(missing[0])} or .nii.gz)",
        )
    doubled = {m: files for m, files in found.items() if len(files) > 1}
    if doubled:
        m, files = next(iter(doubled.items()))
        how = "" if choose is None else choose.hint(m, [f.name for f in files])
        raise PatientError(
            pid,
            f"modality {m} present {len(files)} times: " + ", ".join(f.name for f in files) + how,
        )
    return Patient(pid, label, tuple(found[m][0] for m in modalities), folder, tuple(segs))
