"""Discovery: the patients, their modality files and their labels in every supported input
layout (BIDS, BraTS 2018-2023, class folders, a labels CSV, nnU-Net raw and the Medical
Segmentation Decathlon), found without reading an image.

`patients` holds the shared vocabulary and `labels` the labels CSV; `brats`, `bids` (with
`bids_filter`, its entity filters) and `nnunet` read their layouts; `find` dispatches
(`discover`, `raw_patient`).
"""

from smri.discovery.bids import BidsOptions
from smri.discovery.bids_filter import parse_filters as parse_bids_filters
from smri.discovery.brats import modality_of, parse_brats_name, patient_from_folder
from smri.discovery.find import discover, raw_patient
from smri.discovery.patients import (
    DEFAULT_CLASSES,
    DEFAULT_MODALITIES,
    Discovery,
    Patient,
    class_counts_text,
    parse_classes,
    parse_modalities,
)

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_MODALITIES",
    "BidsOptions",
    "Discovery",
    "Patient",
    "class_counts_text",
    "discover",
    "modality_of",
    "parse_bids_filters",
    "parse_brats_name",
    "parse_classes",
    "parse_modalities",
    "patient_from_folder",
    "raw_patient",
]
