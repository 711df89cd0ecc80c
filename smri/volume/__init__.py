"""Reading NIfTI volumes, and the study's operations on their arrays.

`nifti` loads a volume whole (and says why a file is unusable; a 4D file as its 3D volumes);
`stream` reads a volume's header and then only its central slab, in one pass; `slab` holds the
seed's min–max, central slab and cast (pure array functions); `notes` collects what nibabel
says of a header while smri reads it.
"""

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
    "normalize_into",
    "normalized_slab",
    "open_volume",
    "open_volumes",
    "read_nifti_bytes",
    "slab_start",
]
