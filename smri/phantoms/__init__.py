"""Phantoms: synthetic BraTS-like cohorts (`smri synth`), each patient a pure function of
(seed, index), so the same settings write the same bytes.

`anatomy` draws one phantom; `cohort` holds the settings and plans the patients; `write` writes
the NIfTI files in parallel; `difficulty` measures what an intensity baseline gets from them.
"""

from smri.phantoms.anatomy import MODALITIES, Phantom, make_phantom
from smri.phantoms.cohort import FORMATS, LAYOUTS, PatientSpec, SynthConfig, cohort
from smri.phantoms.difficulty import phantom_features, stats_only_auc
from smri.phantoms.write import synthesize

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "MODALITIES",
    "PatientSpec",
    "Phantom",
    "SynthConfig",
    "cohort",
    "make_phantom",
    "phantom_features",
    "stats_only_auc",
    "synthesize",
]
