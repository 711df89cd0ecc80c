"""Read a store's metadata in a child process before this one reads it.

libhdf5 does not always fail on a damaged file: bytes flipped in a global heap (where the
variable-length strings live: every text attribute, ``patient_id``, ``meta/source_files``) can
send ``H5HG__cache_heap_deserialize`` into an endless loop, and other damage can crash the
process. Neither can be caught or interrupted from Python. So the first time a process opens a
file version (device, inode, size, modification time), a child (`probe_child`) opens the very
file this process holds open, as `StoreReader` does, and then reads every per-patient field
and the chunk indexes; a child that does not finish, or dies by a signal, makes the store
refused with a one-line `DataError`. A child that finishes, with an error or without, lets the
caller go on: its own reading names the damage. The child costs about 0.3 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from smri.errors import DataError

# Seconds the child may take: the metadata of a large store on a slow disk takes a few
PROBE_SECONDS = 60.0
CHILD = "SMRI_PROBE_CHILD"  # set in the child's environment: it probes nothing itself
_probed: set[tuple[int, int, int, int]] = set()


def probe(path: Path, fd: int | None = None) -> None:
    """DataError when reading the store's metadata hangs or crashes libhdf5 (see the module).

    `fd`: a descriptor this process has the store open on (`h5py.FileID.get_vfd_handle`): the
    child then reads that very file, even if `path` was replaced since it was opened.
    """
    try:
        st = os.fstat(fd) if fd is not None else path.stat()
    except OSError:
        return  # opening it says what is wrong
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _probed or not sys.executable or os.environ.get(CHILD):
        return
    target = f"/dev/fd/{fd}" if fd is not None and os.path.isdir("/dev/fd") else str(path)
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, CHILD: "1", "PYTHONPATH": os.pathsep.join(
        p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p
    )}  # fmt: skip
    remedy = "the store is damaged: make it again with `smri preprocess`"
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from smri.store.probe_child import main; main()", target],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_SECONDS, env=env,
            pass_fds=() if fd is None else (fd,),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DataError(
            f"{path}: reading its HDF5 metadata did not finish in {PROBE_SECONDS:g} s "
            f"(libhdf5 loops on a damaged heap or index); {remedy}"
        ) from None
    except OSError:
        return  # no child can be started here: read it unprobed
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise DataError(f"{path}: reading its HDF5 metadata crashes libhdf5 ({name}); {remedy}")
    _probed.add(key)
