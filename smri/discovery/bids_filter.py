"""Choosing among a BIDS subject's variants: entity filters (``--bids-filter``, or a JSON filter
file as BIDS apps take, ``--bids-filter-file``).

Two files for one modality (``acq-MPRAGE`` and ``acq-SPACE``, ``run-1`` and ``run-2``) leave the
subject out unless a filter chooses one. A filter is ``[MODALITY:]ENTITY=VALUE[,VALUE...]``:

- ``acq=MPRAGE`` (no modality): a file that carries ``acq-`` is kept only with ``acq-MPRAGE``;
  files without the entity (a FLAIR without ``acq-``) are kept;
- ``t1:acq=MPRAGE``: the t1 file must carry ``acq-MPRAGE``; ``t1:run=`` (no value): no ``run-``.

ENTITY is a BIDS key (``acq``, ``run``, ``rec``, ``ce``, ``dir``, ``echo``, ``part``, ...) or
its full name (``acquisition``, ``reconstruction``, ...); numbers compare as numbers (``run=1``
matches ``run-01``). MODALITY is smri's name (``flair``, ``t1``, ``t1ce``, ``t2``) or the BIDS
suffix (``FLAIR``, ``T1w``, ``T2w``). A filter file is fMRIPrep's format,
``{"t1w": {"acquisition": "MPRAGE", "run": 1}, "flair": {"acquisition": null}}``: each
query's entities, read as ``t1:`` filters (null: the entity absent; a list: any of its values).
Filters are kept as their text (``t1:acq=MPRAGE``), which the store records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smri.discovery.patients import printable, read_json
from smri.errors import ConfigError, DataError

# BIDS entity names -> their keys in file names (the entities an anat file may carry)
ENTITY_KEYS = {
    "acquisition": "acq", "ceagent": "ce", "reconstruction": "rec", "direction": "dir",
    "run": "run", "echo": "echo", "flip": "flip", "inversion": "inv", "mtransfer": "mt",
    "part": "part", "chunk": "chunk", "processing": "proc", "tracer": "trc",
}  # fmt: skip
NUMBERS = {"run", "echo", "flip", "inv", "chunk"}  # index entities: run-01 is run 1
# Query names of a BIDS app's filter file (and smri's own) -> smri's modality
QUERIES = {"flair": "flair", "t1w": "t1", "t2w": "t2", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
OTHER_QUERIES = {"bold", "sbref", "fmap", "dwi", "roi", "asl", "m0scan", "pet", "t2starw"}
FILE_OPTION = "--bids-filter-file"
RESTATED = ("datatype", "suffix", "extension")  # keys a filter file may hold that smri fixes
_TEXT = re.compile(r"(?:([A-Za-z0-9]+):)?([A-Za-z]+)=([A-Za-z0-9,]*)\Z")


@dataclass(frozen=True)
class EntityFilter:
    """One filter: `modality`'s files (None: every modality's) whose `entity` is one of `values`
    (None among them: the entity absent) are kept."""

    modality: str | None
    entity: str
    values: tuple[str | None, ...]

    @classmethod
    def parse(cls, text: str, option: str = "--bids-filter") -> EntityFilter:
        """``[MODALITY:]ENTITY=VALUE[,VALUE...]``; ConfigError naming `option` otherwise."""
        match = _TEXT.match(text.strip())
        if not match:
            raise ConfigError(
                f"expected [MODALITY:]ENTITY=VALUE (e.g. acq=MPRAGE or t1:run=1), got "
                f"{printable(repr(text))}",
                option=option,
            )
        modality = _modality(match.group(1), option) if match.group(1) else None
        values = tuple(v or None for v in match.group(3).split(","))
        return cls(modality, _entity(match.group(2), option), values)

    def text(self) -> str:
        """The filter as `parse` reads it: ``t1:acq=MPRAGE``."""
        prefix = f"{self.modality}:" if self.modality else ""
        return f"{prefix}{self.entity}={','.join(v or '' for v in self.values)}"

    def keeps(self, modality: str, entities: dict[str, str]) -> bool:
        """Whether a file of `modality` with these entities (keys: ``acq``, ``run``) is kept."""
        if self.modality not in (None, modality):
            return True
        have = entities.get(self.entity)
        if have is None:  # without the entity: kept unless this modality must carry it
            return self.modality is None or None in self.values
        return any(v is not None and _same(self.entity, v, have) for v in self.values)


def _same(entity: str, want: str, have: str) -> bool:
    if entity in NUMBERS and want.isdigit() and have.isdigit():
        return int(want) == int(have)
    return want.lower() == have.lower()


def _modality(name: str, option: str) -> str:
    modality = QUERIES.get(name.lower())
    if modality is None:
        raise ConfigError(
            f"{printable(repr(name))} is not a modality smri reads from BIDS (flair, t1, t1ce, "
            "t2, or FLAIR, T1w, T2w)",
            option=option,
        )
    return modality


def _entity(name: str, option: str) -> str:
    key = ENTITY_KEYS.get(name.lower(), name.lower())
    if key in ("sub", "subject"):
        raise ConfigError("the subject is the patient, not a variant to filter", option=option)
    if key in ("ses", "session"):
        raise ConfigError("choose the session with --session LABEL", option=option)
    if key not in ENTITY_KEYS.values():
        keys = ", ".join(sorted(set(ENTITY_KEYS.values())))
        raise ConfigError(
            f"{printable(repr(name))} is not a BIDS entity of anatomical files ({keys})",
            option=option,
        )
    return key


def read_filter_file(path: Path) -> list[str]:
    """A BIDS app's filter file (fMRIPrep's format) as filter texts: ``{"t1w": {"acquisition":
    "MPRAGE"}}`` -> ``["t1:acq=MPRAGE"]``. Queries smri does not read (``bold``, ``dwi``, ...)
    are skipped; ``datatype``, ``suffix`` and ``extension`` must agree with what smri reads.
    ConfigError (--bids-filter-file) naming the file and the query."""
    try:
        data = read_json(Path(path))
    except DataError as exc:
        raise ConfigError(str(exc), option=FILE_OPTION) from None
    texts = []
    for query, entities in data.items():
        if query.lower() in OTHER_QUERIES:
            continue
        where = f"{path}: query {printable(repr(query))}"
        if query.lower() not in QUERIES:
            raise ConfigError(
                f"{where} is none of t1w, t2w, flair (or t1, t1ce, t2)", option=FILE_OPTION
            )
        if not isinstance(entities, dict):
            raise ConfigError(f"{where}: expected an object of entities", option=FILE_OPTION)
        for name, value in entities.items():
            items = value if isinstance(value, list) else [value]
            if name.lower() in RESTATED:
                _check_restated(name, items, query, where)
                continue
            values = ",".join(_value(item, f"{where}, {printable(repr(name))}") for item in items)
            texts.append(EntityFilter.parse(f"{query}:{_entity(name, FILE_OPTION)}={values}",
                                            FILE_OPTION).text())  # fmt: skip
    return texts


def _value(item: Any, where: str) -> str:
    """One filter value as text: a label, a number, or "" for null (the entity absent)."""
    if item is None:
        return ""
    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
        return str(item)
    if isinstance(item, str) and re.fullmatch(r"[A-Za-z0-9]+", item):
        return item
    raise ConfigError(
        f"{where}: expected a label (letters and digits), a number, null or a list of them, "
        f"got {printable(repr(item))}",
        option=FILE_OPTION,
    )


def _check_restated(name: str, items: list[Any], query: str, where: str) -> None:
    """ConfigError unless `name` (datatype, suffix, extension) allows what smri reads for
    `query`: anat/, the query's suffix, .nii or .nii.gz."""
    suffix = {"t1": "t1w", "t1ce": "t1w", "t2": "t2w"}.get(query.lower(), query.lower())
    reads = {"datatype": ("anat",), "suffix": (suffix,), "extension": (".nii", ".nii.gz")}
    allowed = reads[name.lower()]
    if not any(isinstance(v, str) and v.lower() in allowed for v in items):
        raise ConfigError(
            f"{where}: {name} {printable(repr(items[0] if len(items) == 1 else items))}; smri "
            f"reads {name} {' or '.join(allowed)} for this query",
            option=FILE_OPTION,
        )


def parse_filters(texts: Sequence[str] = (), file: Path | None = None) -> tuple[str, ...]:
    """The filters of ``--bids-filter`` (each checked) and ``--bids-filter-file`` (read), as
    texts (`EntityFilter.text`), file first."""
    from_file = read_filter_file(file) if file is not None else []
    return (*from_file, *(EntityFilter.parse(t).text() for t in texts))


def file_filter(texts: Sequence[str]) -> Callable[[str, dict[str, str]], bool] | None:
    """A test of (modality, a file's entities) that every filter passes; None without filters."""
    filters = [EntityFilter.parse(t) for t in texts]
    if not filters:
        return None
    return lambda modality, entities: all(f.keeps(modality, entities) for f in filters)
