"""A synthetic cohort's settings (`SynthConfig`) and its patients: who they are, their grades
and where their files go, before a voxel is drawn."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from smri.errors import ConfigError
from smri.phantoms.anatomy import SLAB

DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
MIN_INPLANE = 16
MAX_DIM = 1024
LAYOUTS = ("2019", "2020")
FORMATS = ("nii.gz", "nii")


SITE = r"[A-Z][A-Z0-9]{1,7}"  # a site code in BraTS ids (SYN: the demo's own)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic cohort; the same config writes the same bytes."""

    patients: int = 40
    hgg_fraction: float = 0.77
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    layout: str = "2019"
    fmt: str = "nii.gz"
    seed: int = 0
    # the site code in every patient id (BraTS19_<site>_0001_1): cohorts of different sites
    # never share an id, so a second cohort (an untouched test set) cannot collide with the first
    site: str = "SYN"

    def validate(self) -> None:
        """Raise ConfigError naming the option for any setting that cannot work."""
        if self.patients < 1:
            raise ConfigError(f"need at least 1 patient, got {self.patients}", option="--patients")
        if not 0.0 <= self.hgg_fraction <= 1.0 or math.isnan(self.hgg_fraction):
            raise ConfigError(
                f"HGG fraction must be between 0 and 1, got {self.hgg_fraction}",
                option="--hgg-fraction",
            )
        x, y, z = self.shape
        if z < SLAB:
            raise ConfigError(
                f"shape {x} {y} {z} has {z} slices; preprocessing keeps the central {SLAB}, "
                f"so Z must be at least {SLAB}",
                option="--shape",
            )
        if min(x, y) < MIN_INPLANE:
            raise ConfigError(
                f"shape {x} {y} {z} is too small in-plane; X and Y must be at least {MIN_INPLANE}",
                option="--shape",
            )
        if max(self.shape) > MAX_DIM:
            raise ConfigError(
                f"shape {x} {y} {z} is too large; each size must be at most {MAX_DIM}",
                option="--shape",
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}", option="--layout")
        if self.fmt not in FORMATS:
            raise ConfigError(f"unknown format {self.fmt!r}", option="--format")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}", option="--seed")
        if not isinstance(self.site, str) or not re.fullmatch(SITE, self.site):
            raise ConfigError(
                f"expected 2 to 8 capital letters or digits, starting with a letter, got "
                f"{self.site!r}",
                option="--site",
            )


@dataclass(frozen=True)
class PatientSpec:
    """Who one patient is: its index (1-based), id, grade and where its files go."""

    index: int
    patient_id: str
    grade: str  # "HGG" or "LGG"
    folder: str  # relative to the cohort root

    @property
    def label(self) -> int:
        """1 for HGG, 0 for LGG."""
        return int(self.grade == "HGG")


def cohort(cfg: SynthConfig) -> list[PatientSpec]:
    """The cohort's patients in index order; grades are a seeded shuffle of round(N * fraction)."""
    n = cfg.patients
    n_hgg = round(n * cfg.hgg_fraction)
    grades = np.array(["HGG"] * n_hgg + ["LGG"] * (n - n_hgg))
    grades = grades[np.random.default_rng([cfg.seed, 0]).permutation(n)]
    specs = []
    for i, grade in enumerate(grades, start=1):
        if cfg.layout == "2019":
            pid = f"BraTS19_{cfg.site}_{i:04d}_1"
            folder = f"{grade}/{pid}"
        else:
            pid = f"BraTS20_{'Training' if cfg.site == 'SYN' else cfg.site}_{i:03d}"
            folder = pid
        specs.append(PatientSpec(index=i, patient_id=pid, grade=str(grade), folder=folder))
    return specs
