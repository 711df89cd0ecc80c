"""The HDF5 store: the one file contract between `smri preprocess` and everything after it.

`schema` names every key, the schema version, dtypes and compressions; `checks` validates a file
against them; `probe` reads a file's metadata in a child first (libhdf5 can loop or crash on
damage); `reader` opens and describes a store (`StoreReader`, `read_info`); `writer` is the
single writer (`StoreWriter`); `direct` the direct-write path it takes where it can (image
chunks with O_DIRECT, masks compressed by the workers); `errors` the refusals and failed writes.
No module outside this package spells a key.
"""

from smri.store.checks import check_contents, nonfinite_message, range_message
from smri.store.direct import MaskChunk, StoredMask, empty_images, encode_mask
from smri.store.errors import (
    LockedError,
    StoreChanged,
    StoreWriteError,
    check_room,
    write_error,
)
from smri.store.reader import (
    Placement,
    StoreReader,
    coverage,
    orientation_counts,
    patient_axis_codes,
    read_info,
)
from smri.store.schema import (
    AXIS_ORDER,
    COMPRESSIONS,
    DTYPES,
    FORMAT,
    IMAGES,
    LABEL_VALUES,
    LABELS,
    LOW_COVERAGE,
    MASKS,
    META,
    META_FIELDS,
    META_FIELDS_V2,
    META_FIELDS_V3,
    NO_MASK,
    PARTIAL_STATE,
    PATIENT_ID,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    StoreIdentity,
    StoreInfo,
    added_fields,
)
from smri.store.writer import StoreWriter

__all__ = [
    "AXIS_ORDER",
    "COMPRESSIONS",
    "DTYPES",
    "FORMAT",
    "IMAGES",
    "LABELS",
    "LABEL_VALUES",
    "LOW_COVERAGE",
    "MASKS",
    "META",
    "META_FIELDS",
    "META_FIELDS_V2",
    "META_FIELDS_V3",
    "NO_MASK",
    "PARTIAL_STATE",
    "PATIENT_ID",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "LockedError",
    "MaskChunk",
    "Placement",
    "StoreChanged",
    "StoreIdentity",
    "StoreInfo",
    "StoreReader",
    "StoreWriteError",
    "StoreWriter",
    "StoredMask",
    "added_fields",
    "check_contents",
    "check_room",
    "coverage",
    "empty_images",
    "encode_mask",
    "nonfinite_message",
    "orientation_counts",
    "patient_axis_codes",
    "range_message",
    "read_info",
    "write_error",
]
