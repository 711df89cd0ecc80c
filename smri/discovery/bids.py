"""BIDS datasets: subjects, sessions, their anatomical files, and labels from participants.tsv.

    ROOT/participants.tsv                            participant_id, then one column per fact
    ROOT/sub-01/anat/sub-01_FLAIR.nii.gz             -> flair
    ROOT/sub-01/anat/sub-01_T1w.nii.gz               -> t1
    ROOT/sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz -> t1ce (any ce-<label>)
    ROOT/sub-01/anat/sub-01_T2w.nii.gz               -> t2
    ROOT/sub-02/ses-01/anat/sub-02_ses-01_T1w.nii.gz    (with sessions)

Only ``sub-*/[ses-*/]anat/`` is read: ``derivatives/``, ``sourcedata/``, ``code/``, JSON sidecars
and other suffixes (``T2starw``, ``PDw``, ``defacemask``, ``ce-`` on anything but ``T1w``) are
ignored. Two files for one modality (``run-1`` and ``run-2``, two ``acq-`` variants) make the
subject unusable, with the files named and the entities that tell them apart, unless an entity
filter chooses one (``--bids-filter acq=MPRAGE``, `smri.discovery.bids_filter`): smri never
picks one silently. A subject with several
sessions needs ``--session``: sessions of one subject are not independent patients, and a
patient-level split must not put them on both sides. The patient id is the subject
(``sub-01``), as in participants.tsv.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smri.discovery.bids_filter import file_filter
from smri.discovery.labels import read_labels_csv
from smri.discovery.patients import (
    NEUTRAL_CLASSES,
    UNLABELLED,
    Discovery,
    Patient,
    check_followable,
    check_mapped_modalities,
    column_classes,
    list_subfolders,
    printable,
    read_patient_folder,
)
from smri.errors import ConfigError, DataError, PatientError
from smri.files import check_regular, special_kind

PARTICIPANTS = "participants.tsv"
DESCRIPTION = "dataset_description.json"
SUBJECT = re.compile(r"sub-[A-Za-z0-9]+\Z")
SESSION = re.compile(r"ses-[A-Za-z0-9]+\Z")
_FILE = re.compile(
    r"(sub-[A-Za-z0-9]+)((?:_[A-Za-z]+-[A-Za-z0-9]+)*)_([A-Za-z0-9]+)\.nii(\.gz)?\Z", re.IGNORECASE
)
# (suffix, has a ce- entity) -> smri's modality name
SUFFIXES = {("flair", False): "flair", ("t1w", False): "t1", ("t1w", True): "t1ce",
            ("t2w", False): "t2"}  # fmt: skip
HINTS = {"flair": "_FLAIR.nii", "t1": "_T1w.nii", "t1ce": "_ce-<label>_T1w.nii", "t2": "_T2w.nii"}
MISSING_VALUES = ("", "n/a")


@dataclass(frozen=True)
class BidsOptions:
    """How a BIDS dataset is read: the participants.tsv column holding the labels, the value
    meaning class 1 (others are 0; without it, 0/1 or class names), the session to use, and
    the entity filters that choose among a modality's variants (texts such as
    ``t1:acq=MPRAGE``, from `smri.discovery.bids_filter.parse_filters`)."""

    label_column: str | None = None
    positive: str | None = None
    session: str | None = None
    bids_filter: tuple[str, ...] = ()


class EntityChooser:
    """`smri.discovery.patients.Chooser` of BIDS files: the entity filters keep files, and a
    message naming variants says which entities tell them apart."""

    name = "--bids-filter"

    def __init__(self, filters: Sequence[str] = ()):
        self.filters = tuple(filters)
        self._test = file_filter(self.filters)

    def keeps(self, modality: str, file_name: str) -> bool:
        return self._test is None or self._test(modality, bids_entities(file_name))

    def hint(self, modality: str, file_names: list[str]) -> str:
        variants = [bids_entities(n) for n in file_names]
        keys = sorted({k for e in variants for k in e if len({v.get(k) for v in variants}) > 1})
        after = " after --bids-filter " + " ".join(self.filters) if self.filters else ""
        if not keys:
            return after
        return (
            f"{after}; they differ in {', '.join(keys)}: choose one with --bids-filter "
            f"{modality}:{keys[0]}=VALUE"
        )


def bids_entities(name: str) -> dict[str, str]:
    """The entities of a BIDS file name after ``sub-``, keys in lower case:
    ``sub-01_acq-MPRAGE_run-2_T1w.nii.gz`` -> ``{"acq": "MPRAGE", "run": "2"}``."""
    match = _FILE.match(name)
    if not match:
        return {}
    entities = dict(e.split("-", 1) for e in match.group(2).split("_")[1:])
    return {k.lower(): v for k, v in entities.items()}


def parse_bids_name(name: str) -> tuple[str | None, str | None]:
    """(modality, owner) of a BIDS file name: ``sub-01_ses-02_ce-gd_T1w.nii.gz`` ->
    ``("t1ce", "sub-01_ses-02")``; ``(None, None)`` for anything smri does not read."""
    match = _FILE.match(name)
    if not match:
        return None, None
    entities = bids_entities(name)
    modality = SUFFIXES.get((match.group(3).lower(), "ce" in entities))
    session = f"_ses-{entities['ses']}" if "ses" in entities else ""
    return modality, match.group(1) + session


def is_bids(root: Path, subfolders: Sequence[Path]) -> bool:
    """Whether `root` is a BIDS dataset: a dataset_description.json, or a subject folder with
    an anat/ or ses-*/ folder."""
    if (root / DESCRIPTION).is_file():
        return True
    return any(
        SUBJECT.match(d.name)
        and ((d / "anat").is_dir() or any(SESSION.match(s.name) for s in _subfolders(d)))
        for d in subfolders
    )


def _subfolders(folder: Path) -> list[Path]:
    """`list_subfolders`, or none for a folder that cannot be listed (a link loop): reading
    that subject says why."""
    try:
        return list_subfolders(folder)
    except DataError:
        return []


def sessions(subject: Path) -> list[tuple[str | None, Path]]:
    """The subject's anat folders: ``(None, sub/anat)`` and ``("ses-x", sub/ses-x/anat)``."""
    found: list[tuple[str | None, Path]] = []
    if (subject / "anat").is_dir():
        found.append((None, subject / "anat"))
    found += [
        (d.name, d / "anat")
        for d in list_subfolders(subject)
        if SESSION.match(d.name) and (d / "anat").is_dir()
    ]
    return found


def subject_patient(
    subject: Path,
    modalities: Sequence[str],
    label: int,
    session: str | None = None,
    bids_filter: Sequence[str] = (),
) -> Patient:
    """The patient of one subject folder (its only session, or `session`), its files chosen
    by `bids_filter`; PatientError if the subject has no session, several without `session`,
    or its anat folder lacks a modality or holds several variants of one."""
    pid = subject.name
    check_followable(subject, pid)
    found = sessions(subject)
    names = ", ".join(name or "anat/ without a session" for name, _ in found)
    if session is not None:
        want = session if session.startswith("ses-") else f"ses-{session}"
        found = [s for s in found if s[0] == want]
        if not found:
            raise PatientError(
                pid, f"no {want}/anat folder in {subject} (found: {names or 'none'})"
            )
    elif len(found) > 1:
        raise PatientError(pid, f"{len(found)} sessions ({names}); choose one with --session LABEL")
    elif not found:
        raise PatientError(pid, f"no anat folder in {subject}")
    name, anat = found[0]
    owner = pid if name is None else f"{pid}_{name}"
    return _anat_patient(anat, modalities, label, pid, owner, bids_filter)


def _anat_patient(
    anat: Path,
    modalities: Sequence[str],
    label: int,
    pid: str,
    owner: str,
    bids_filter: Sequence[str] = (),
) -> Patient:
    return read_patient_folder(
        anat, modalities, label, pid, parse=parse_bids_name, owner=owner,
        hint=lambda m: HINTS.get(m, f"_{m}.nii"), choose=EntityChooser(bids_filter),
    )  # fmt: skip


def is_subject(folder: Path) -> bool:
    """Whether `folder` is a BIDS subject (``sub-01``) with an anat/ or a ses-*/anat/ folder."""
    return bool(SUBJECT.match(folder.name) and sessions(folder))


def is_session(folder: Path) -> bool:
    """Whether `folder` is a BIDS session (``sub-01/ses-02``) with an anat/ folder."""
    parent = folder.resolve().parent.name
    return bool(SESSION.match(folder.name) and SUBJECT.match(parent) and (folder / "anat").is_dir())


def session_patient(session: Path, modalities: Sequence[str], label: int) -> Patient:
    """The patient of one session folder (``sub-01/ses-02``), with id ``sub-01_ses-02``."""
    pid = f"{session.resolve().parent.name}_{session.name}"
    return _anat_patient(session / "anat", modalities, label, pid, pid)


def read_participants(
    path: Path, column: str, positive: str | None, classes: dict[str, int]
) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
    """participants.tsv -> (subject -> label, subject -> why it has none, class names: with
    `positive`, ``not VALUE`` and VALUE; else those of `classes` when the column uses them,
    else ``"0"`` and ``"1"``).

    With `positive`, a value equal to it (ignoring case) is 1 and any other value 0; without,
    values are 0, 1 or a class name. ``n/a`` or an empty cell leaves the subject unlabelled.
    Ids without the ``sub-`` prefix are read as if they had it.
    """
    try:
        with open(check_regular(path), newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read participants table ({exc})") from None
    header = [c.strip() for c in rows[0]] if rows else []
    lower = {c.lower(): i for i, c in enumerate(header)}
    if "participant_id" not in lower:
        raise DataError(
            f"{path}: no participant_id column (found: {', '.join(header) or 'nothing'})"
        )
    col = header.index(column) if column in header else lower.get(column.lower())
    if col is None or col == lower["participant_id"]:
        raise ConfigError(
            f"{path} has no label column {column!r}; columns: {', '.join(header)}",
            option="--label-column",
        )
    id_col, by_name = lower["participant_id"], {k.lower(): v for k, v in classes.items()}
    labels: dict[str, int] = {}
    missing: dict[str, str] = {}
    values: set[str] = set()
    named = False
    for line, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        pid = cells[id_col]
        if not pid:
            continue
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        raw = cells[col]
        if raw.lower() in MISSING_VALUES:
            missing[pid] = f"no {column} in {PARTICIPANTS} (line {line}: {raw or 'empty'})"
            continue
        values.add(raw)
        if positive is not None:
            value = int(raw.lower() == positive.lower())
        elif raw in ("0", "1"):
            value = int(raw)
        elif raw.lower() in by_name:
            value, named = by_name[raw.lower()], True
        else:
            raise DataError(
                f"{path}, line {line}: {printable(pid)} has {column} {raw!r}; expected 0, 1 "
                f"or a class name ({', '.join(classes)}), or give --positive VALUE"
            )
        if labels.get(pid, value) != value:
            raise DataError(
                f"{path}, line {line}: {printable(pid)} listed twice with different labels"
            )
        labels[pid] = value
    if positive is not None and values and 1 not in labels.values():
        shown = ", ".join(sorted(values)[:10]) + (", ..." if len(values) > 10 else "")
        raise ConfigError(
            f"no participant has {column} {positive!r} in {path} (values: {shown})",
            option="--positive",
        )
    if positive is not None:
        return labels, missing, {f"not {positive}": 0, positive: 1}
    return labels, missing, column_classes(named, classes)


def _labels(
    root: Path, classes: dict[str, int], labels_csv: Path | None, opts: BidsOptions
) -> tuple[dict[str, int] | None, dict[str, str], str, dict[str, int]]:
    """(labels, reasons for unlabelled subjects, the source's name, the class names); labels
    None: none asked."""
    if opts.positive is not None and opts.label_column is None:
        raise ConfigError("needs --label-column, the column it is a value of", option="--positive")
    if labels_csv is not None:
        if opts.label_column is not None:
            raise ConfigError(
                "labels come from --labels CSV or from a participants.tsv column, not both",
                option="--label-column",
            )
        labels, names = read_labels_csv(labels_csv, classes)
        return labels, {}, labels_csv.name, names
    path = root / PARTICIPANTS
    if opts.label_column is None:
        return None, {}, PARTICIPANTS, dict(NEUTRAL_CLASSES)
    if not path.is_file():
        raise DataError(
            f"{root}: BIDS dataset without {PARTICIPANTS}; --label-column reads that file "
            "(or give --labels CSV)"
        )
    labels, missing, names = read_participants(path, opts.label_column, opts.positive, classes)
    return labels, missing, PARTICIPANTS, names


def _columns(path: Path) -> str:
    if special_kind(path) is not None:
        return "unreadable"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter="\t"), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return "unreadable"
    return ", ".join(c.strip() for c in header if c.strip().lower() != "participant_id") or "none"


def discover_bids(
    root: Path,
    subfolders: Sequence[Path],
    modalities: Sequence[str],
    classes: dict[str, int],
    labels_csv: Path | None,
    opts: BidsOptions,
    allow_unlabelled: bool = False,
) -> Discovery:
    """Every subject of a BIDS dataset with its label; subjects that cannot be used, with why."""
    check_mapped_modalities(
        modalities, {"FLAIR": "flair", "T1w": "t1", "ce-T1w": "t1ce", "T2w": "t2"}, "BIDS",
        "_FLAIR, _T1w, _ce-<label>_T1w, _T2w",
    )  # fmt: skip
    labels, missing, source, names = _labels(root, classes, labels_csv, opts)
    if labels is None and not allow_unlabelled:
        where = root / PARTICIPANTS
        found = f"its columns: {_columns(where)}" if where.is_file() else f"no {PARTICIPANTS}"
        raise ConfigError(
            f"{root} is a BIDS dataset: name the {PARTICIPANTS} column holding the labels "
            f"with --label-column ({found}), or give --labels CSV",
            option="--label-column",
        )
    result = Discovery(root, "bids", classes=names)
    subjects = [d for d in subfolders if SUBJECT.match(d.name)]
    for subject in subjects:
        pid = subject.name
        if labels is None:
            label = UNLABELLED
        elif pid in labels:
            label = labels[pid]
        elif pid in missing:
            result.skipped.append(PatientError(pid, missing[pid]))
            continue
        elif allow_unlabelled:
            label = UNLABELLED
        else:
            result.skipped.append(PatientError(pid, f"no row for this subject in {source}"))
            continue
        try:
            result.patients.append(
                subject_patient(subject, modalities, label, opts.session, opts.bids_filter)
            )
        except PatientError as exc:
            result.skipped.append(exc)
    names = {d.name for d in subjects}
    for pid in sorted((set(labels or {}) | set(missing)) - names):
        result.skipped.append(
            PatientError(
                printable(pid), f"listed in {source} but no folder {printable(str(root / pid))}"
            )
        )
    return result
