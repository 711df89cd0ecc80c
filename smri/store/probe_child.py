"""The child `smri.store.probe` starts: it reads a store as a reader would (see there)."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py

from smri.store.reader import StoreReader
from smri.store.schema import IMAGES, MASKS, META, META_FIELDS, added_fields


def _read_as_a_reader(path: Path) -> None:
    """What `StoreReader` reads on opening (its checks first: nothing the checks refuse is
    read), then every per-patient field whole and the chunk indexes of images and masks."""
    with StoreReader(path) as reader:
        version = reader.version
    with h5py.File(path, "r") as f:
        for name in (*META_FIELDS, *added_fields(version)):
            if name in f[META]:
                f[META][name][()]
        for name in (IMAGES, MASKS):
            if name in f:
                f[name].id.get_num_chunks()


def main() -> None:
    """The child: exit 0 when the store reads, 1 when it reads to an error."""
    try:
        _read_as_a_reader(Path(sys.argv[1]))
    except Exception:  # the caller's own reading says what is wrong
        sys.exit(1)
