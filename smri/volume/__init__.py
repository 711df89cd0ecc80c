"""Reading NIfTI volumes, and the study's operations on their arrays.

`nifti` loads a volume whole (and says why a file is unusable; a 4D file as its 3D volumes);
`stream` reads a volume's header and then only its central slab, in one pass; `slab` holds the
seed's min–max, central slab and cast (pure array functions); `geometry` the affines between a
stored slab and its scan; `write` writes NIfTI files; `notes` collects what nibabel says of a
header while smri reads it.
"""

from smri.volume.geometry import scan_affine, slab_to_scan, stored_affine, to_scan_grid
from smri.volume.nifti import Volume, axis_codes, load_volume, load_volumes, read_nifti_bytes
from smri.volume.notes import nibabel_notes
from smri.volume.slab import (
    cast_into,
    central_slab,
    flat_note,
    label_slab,
    minmax_normalize,
    normalize_into,
    normalized_slab,
    slab_start,
)
from smri.volume.stream import SlabSource, header_shape, open_volume, open_volumes
from smri.volume.write import nifti_bytes, write_nifti

__all__ = [
    "SlabSource",
    "Volume",
    "axis_codes",
    "cast_into",
    "central_slab",
    "flat_note",
    "header_shape",
    "label_slab",
    "load_volume",
    "load_volumes",
    "minmax_normalize",
    "nibabel_notes",
    "nifti_bytes",
    "normalize_into",
    "normalized_slab",
    "open_volume",
    "open_volumes",
    "read_nifti_bytes",
    "scan_affine",
    "slab_start",
    "slab_to_scan",
    "stored_affine",
    "to_scan_grid",
    "write_nifti",
]
