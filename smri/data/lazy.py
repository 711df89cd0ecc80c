"""The one way a Dataset holds the store: a reader opened lazily, in each process, never shared.

Both Datasets over a store (`BatchDataset` for smri's own training, `StoreDataset` for other
loops) take it as a mixin: the index is built in ``__init__``, the file is opened on first
access inside each process (every DataLoader worker, forked or spawned), and no HDF5 handle is
carried across a fork or pickled (fastMRI's `SliceDataset`; h5py handles do not survive fork).

Each opening checks that the file is still the store the rows were planned on (`identity`,
taken when the parent read the store): a store that `smri preprocess --append` replaced
meanwhile holds other patients at the same rows, and a worker stops with one line instead of
reading them. The check costs one fstat per opening, nothing per read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smri.store import StoreIdentity, StoreReader


class LazyReader:
    """Mixin: `reader` opens the store at `self.path` on first use in this process."""

    path: Path
    identity: StoreIdentity | None = None  # the file the rows were planned on (None: any)
    _reader: StoreReader | None = None
    _pid: int | None = None  # the process that opened `_reader`

    @property
    def reader(self) -> StoreReader:
        """This process's reader: opened on first use, and again in a forked child."""
        if self._reader is None or self._pid != os.getpid():
            # a parent's handle is never used after fork
            self._reader = StoreReader(self.path, expect=self.identity)
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None  # a handle never travels to another process
        return state

    def close(self) -> None:
        """Close this process's file handle, if open."""
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader, self._pid = None, None
