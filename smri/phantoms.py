"""Phantom BraTS-like cohorts: head, brain, tissues and a glioma per patient, written as NIfTI.

Every patient is a pure function of ``(seed, index)`` (``np.random.default_rng([seed, index])``),
so the bytes written do not depend on ``--jobs`` or on the order in which workers finish.
Geometry is built in millimetres over a fixed 240 x 240 x 155 mm field of view; a smaller
``shape`` only coarsens the voxels (the affine records the spacing), so a reduced cohort is the
same anatomy at a lower resolution. Arrays are computed in (z, y, x) C order and written as the
(x, y, z) Fortran-ordered view NIfTI expects, which costs no copy.

What makes the task learnable but not trivial: HGG tumours carry a necrotic core and an
enhancing rim on T1ce; LGG tumours are non-enhancing and bright on T2/FLAIR. Lesion sizes
overlap, a few cases per class are atypical, and per-scan gain, contrast jitter, bias fields,
ventricle size and bright non-tumour structures (scalp fat, the sagittal sinus and choroid
plexus on T1ce) vary so that global intensity statistics of the normalised volumes say little
about the grade.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from smri.atomic import PARTIAL_SUFFIX, atomic_path, write_text
from smri.errors import ConfigError

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
FOV_MM: tuple[float, float, float] = (240.0, 240.0, 155.0)  # x, y, z: BraTS geometry at 1 mm
DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
SLAB = 32  # the central slab preprocessing keeps; most tumours overlap it (see Z_SD_MM)
MIN_INPLANE = 16
MAX_DIM = 1024
LAYOUTS = ("2019", "2020")
FORMATS = ("nii.gz", "nii")
NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
TRUTH_COLUMNS = (
    "patient_id",
    "grade",
    "label",
    "centre_x",
    "centre_y",
    "centre_z",
    "centre_in_slab",
    "radius_x_mm",
    "radius_y_mm",
    "radius_z_mm",
    "oedema_factor",
    "necrosis_fraction",
    "enhancement",
    "atypical",
    "atypical_kind",
    "voxels_necrotic_core",
    "voxels_oedema",
    "voxels_enhancing",
    "tumour_voxels",
    "tumour_voxels_in_slab",
    "share_in_slab",
)
# Tumour centres along the slice axis: normal around the slab's middle, this spread in mm. An
# assumption (gliomas anywhere in the cerebrum, most near the ventricles' level), not measured on
# BraTS; it leaves about a third of the centres outside the 32-mm slab (docs/demo-data.md).
Z_SD_MM = 20.0
P_ATYPICAL = 0.06
MARKER = ".smri-synth"  # hidden file that marks a folder as a synth cohort (for --overwrite)
NOISE_OFFSET = 7919  # voxels between the noise windows of one patient's images

# Tissue labels of the phantom (uint8); the segmentation maps the tumour ones to BraTS labels.
AIR, SKIN, FAT, SKULL, CSF, GM, WM, VENT, SINUS, PLEXUS, SPOT = range(11)
OEDEMA, CORE, NECROSIS, ENHANCING = range(11, 15)  # the tumour: labels >= OEDEMA
N_LABELS = 15
SEG_OF_LABEL = np.zeros(N_LABELS, dtype=np.uint8)
SEG_OF_LABEL[[CORE, NECROSIS]] = 1  # NCR/NET
SEG_OF_LABEL[OEDEMA] = 2  # ED
SEG_OF_LABEL[ENHANCING] = 4  # ET


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic cohort; the same config writes the same bytes."""

    patients: int = 40
    hgg_fraction: float = 0.77
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    layout: str = "2019"
    fmt: str = "nii.gz"
    seed: int = 0

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


@dataclass
class Phantom:
    """One generated patient: int16 volumes, uint8 segmentation and tissue map, all (X, Y, Z)."""

    volumes: dict[str, np.ndarray]
    seg: np.ndarray
    tissue: np.ndarray  # the phantom's labels (AIR, ..., ENHANCING); not written to disk
    affine: np.ndarray
    truth: dict[str, Any]


def cohort(cfg: SynthConfig) -> list[PatientSpec]:
    """The cohort's patients in index order; grades are a seeded shuffle of round(N * fraction)."""
    n = cfg.patients
    n_hgg = round(n * cfg.hgg_fraction)
    grades = np.array(["HGG"] * n_hgg + ["LGG"] * (n - n_hgg))
    grades = grades[np.random.default_rng([cfg.seed, 0]).permutation(n)]
    specs = []
    for i, grade in enumerate(grades, start=1):
        if cfg.layout == "2019":
            pid = f"BraTS19_SYN_{i:04d}_1"
            folder = f"{grade}/{pid}"
        else:
            pid = f"BraTS20_Training_{i:03d}"
            folder = pid
        specs.append(PatientSpec(index=i, patient_id=pid, grade=str(grade), folder=folder))
    return specs


def spacing_of(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size in mm of a `shape` grid over the fixed field of view (1 mm at 240x240x155)."""
    return tuple(f / n for f, n in zip(FOV_MM, shape, strict=True))  # type: ignore[return-value]


def affine_of(shape: tuple[int, int, int]) -> np.ndarray:
    """A BraTS-like LPS affine: diag(-sx, -sy, sz) with the y origin at the far edge."""
    sx, sy, sz = spacing_of(shape)
    return np.array(
        [[-sx, 0, 0, 0], [0, -sy, 0, (shape[1] - 1) * sy], [0, 0, sz, 0], [0, 0, 0, 1]],
        dtype=np.float64,
    )


# ----------------------------------------------------------------------------- fields


def smooth_field(
    rng: np.random.Generator, coords: tuple[np.ndarray, np.ndarray, np.ndarray], step_mm: float
) -> np.ndarray:
    """A unit-variance smooth random field on the (z, y, x) grid of 1-D mm coordinates.

    Gaussian-weighted interpolation of i.i.d. normal knots every `step_mm`, done separably
    (three small matrix products), so a full-size field costs tens of milliseconds.
    """
    mats = []
    for c in coords:
        n_knots = math.ceil((float(c[-1]) - float(c[0])) / step_mm) + 3
        knots = float(c[0]) - step_mm + step_mm * np.arange(n_knots)
        w = np.exp(-0.5 * ((c[:, None] - knots[None, :]) / (0.6 * step_mm)) ** 2)
        w /= np.sqrt((w**2).sum(axis=1, keepdims=True))  # unit variance for unit-variance knots
        mats.append(w.astype(np.float32))
    wz, wy, wx = mats
    knots3 = rng.standard_normal((wz.shape[1], wy.shape[1], wx.shape[1]), dtype=np.float32)
    t = knots3 @ wx.T  # (kz, ky, nx)
    t = np.matmul(wy, t)  # (kz, ny, nx)
    out = wz @ t.reshape(t.shape[0], -1)  # (nz, ny * nx)
    return out.reshape(len(coords[0]), len(coords[1]), len(coords[2]))


def _box(
    centre: np.ndarray, half: np.ndarray, lo: np.ndarray, step: np.ndarray, n: np.ndarray
) -> tuple[slice, slice, slice] | None:
    """Index slices (z, y, x) of the voxels within `half` mm of `centre` (mm), or None if empty."""
    first = np.floor((centre - half - lo) / step).astype(int)
    last = np.ceil((centre + half - lo) / step).astype(int) + 1
    first, last = np.maximum(first, 0), np.minimum(last, n)
    if np.any(last <= first):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def _paint_ellipsoid(
    lab: np.ndarray,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    value: int,
    where: np.ndarray | None = None,
) -> None:
    """Set `lab` to `value` inside an axis-aligned ellipsoid (mm, z-y-x order), maybe masked."""
    c = np.array(centre)
    r = np.array(radii)
    lo = np.array([cc[0] for cc in coords])
    step = np.array([cc[1] - cc[0] if len(cc) > 1 else 1.0 for cc in coords])
    box = _box(c, r, lo, step, np.array(lab.shape))
    if box is None:
        return
    z, y, x = (cc[b] for cc, b in zip(coords, box, strict=True))
    q = (
        ((z - c[0]) / r[0])[:, None, None] ** 2
        + ((y - c[1]) / r[1])[None, :, None] ** 2
        + ((x - c[2]) / r[2])[None, None, :] ** 2
    )
    inside = q < 1.0
    if where is not None:
        inside &= where[box]
    lab[box][inside] = value


# ----------------------------------------------------------------------------- one patient


def _tumour_params(rng: np.random.Generator, grade: str) -> dict[str, Any]:
    """Sizes (mm), oedema extent, necrosis and enhancement of one tumour, with atypical cases."""
    atypical = bool(rng.random() < P_ATYPICAL)
    if grade == "HGG":
        core = rng.uniform(9.0, 22.0)
        oedema_factor = rng.uniform(1.25, 1.9)
        necrosis = rng.uniform(0.4, 0.75)
        enhancement = rng.uniform(0.45, 1.0)
        kind = "no_necrosis" if atypical else ""
        # An atypical HGG has no necrosis; otherwise the rim stays at least 2.5 mm thick.
        necrosis = 0.0 if atypical else min(necrosis, 1.0 - 2.5 / core)
    else:
        core = rng.uniform(9.0, 26.0)
        oedema_factor = rng.uniform(1.0, 1.3)
        necrosis = 0.0
        enhancement = rng.uniform(0.12, 0.3) if atypical else 0.0
        kind = "faint_enhancement" if atypical else ""
    stretch = rng.uniform(0.8, 1.2, size=3)
    return {
        "radii": core * stretch,  # z, y, x
        "oedema_factor": oedema_factor,
        "necrosis_fraction": necrosis,
        "enhancement": enhancement,
        "atypical": atypical,
        "atypical_kind": kind,
        "yaw": rng.uniform(0, 2 * math.pi),
    }


# Intensity relative to white matter per tissue label and modality (flair, t1, t1ce, t2), as the
# (low, high) of a uniform draw per scan. T1ce of fat follows T1; scalp spots are brighter fat;
# the enhancing tumour's T1ce is 1 + the tumour's enhancement (see `_contrast_table`).
CONTRAST_RANGES: dict[int, tuple[tuple[float, float], ...]] = {
    AIR: ((0, 0), (0, 0), (0, 0), (0, 0)),
    SKIN: ((0.8, 0.8), (0.75, 0.75), (0.8, 0.8), (0.9, 0.9)),
    FAT: ((0.9, 1.6), (1.25, 2.0), (1.25, 2.0), (0.9, 1.5)),
    SKULL: ((0.05, 0.15), (0.05, 0.15), (0.05, 0.15), (0.05, 0.15)),
    CSF: ((0.12, 0.25), (0.3, 0.3), (0.32, 0.32), (2.2, 2.8)),
    GM: ((1.18, 1.18), (0.72, 0.72), (0.75, 0.75), (1.35, 1.35)),
    WM: ((1, 1), (1, 1), (1, 1), (1, 1)),
    VENT: ((0.12, 0.25), (0.3, 0.3), (0.32, 0.32), (2.2, 2.8)),
    SINUS: ((0.35, 0.35), (0.55, 0.55), (1.4, 2.6), (0.35, 0.35)),
    PLEXUS: ((0.8, 0.8), (0.65, 0.65), (1.2, 2.2), (1.3, 1.3)),
    SPOT: ((1.2, 1.9), (1.0, 1.3), (1.0, 1.4), (1.2, 1.8)),
    OEDEMA: ((1.35, 1.7), (0.72, 0.72), (0.74, 0.74), (1.7, 2.2)),
    CORE: ((1.45, 1.8), (0.62, 0.62), (0.64, 0.64), (1.9, 2.4)),
    NECROSIS: ((0.7, 1.1), (0.42, 0.42), (0.45, 0.45), (2.1, 2.6)),
    ENHANCING: ((1.4, 1.4), (0.75, 0.75), (0.95, 1.1), (1.6, 1.6)),
}


def _contrast_table(rng: np.random.Generator, enhancement: float) -> dict[str, np.ndarray]:
    """Per-modality intensity of every tissue label for one patient, with +-5 % jitter."""
    ranges = np.array([CONTRAST_RANGES[k] for k in range(N_LABELS)], dtype=np.float64)
    values = rng.uniform(ranges[..., 0], ranges[..., 1])  # (labels, modalities)
    t1, t1ce = MODALITIES.index("t1"), MODALITIES.index("t1ce")
    values[FAT, t1ce] = values[FAT, t1] * rng.uniform(0.95, 1.05)
    values[SPOT, t1] *= values[FAT, t1]  # the ranges above are factors over fat here
    values[SPOT, t1ce] *= values[FAT, t1]
    values[ENHANCING, t1ce] *= 1 + enhancement
    values *= rng.uniform(0.95, 1.05, size=values.shape)
    values[WM] = 1.0
    return {m: values[:, j].astype(np.float32) for j, m in enumerate(MODALITIES)}


@dataclass
class _Head:
    """One phantom head inside its bounding box: mm coordinates, tissue labels, surface distance."""

    box: tuple[slice, slice, slice]  # the head's (z, y, x) box in the full grid
    local: tuple[np.ndarray, np.ndarray, np.ndarray]  # mm from the brain centre, per axis
    centre: tuple[float, float, float]  # brain centre (x, y, z) in mm of the field of view
    semi_axes: tuple[float, float, float]  # brain semi-axes (x, y, z) in mm
    yaw: float  # in-plane rotation of the brain frame, radians
    lab: np.ndarray  # uint8 tissue labels, (z, y, x) over the box
    outside: np.ndarray  # float32 ~ mm outside the brain surface (negative inside)

    def to_local(self, bx: float, by: float, bz: float) -> np.ndarray:
        """Brain-frame mm (x, y, z) -> local box coordinates (z, y, x)."""
        cos, sin = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([bz, sin * bx + cos * by, cos * bx - sin * by])


def _make_head(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Head:
    """A head of random size, position and yaw: scalp, skull, CSF, cortex, WM, ventricles."""
    nx, ny, nz = shape
    sx, sy, sz = spacing_of(shape)
    scale = rng.uniform(0.86, 1.06)
    ax, ay, az = scale * np.array([66.0, 84.0, 64.0]) * rng.uniform(0.96, 1.04, size=3)
    cx = FOV_MM[0] / 2 + rng.normal(0, 4)
    cy = FOV_MM[1] / 2 + rng.normal(0, 5)
    cz = min(FOV_MM[2] / 2 + rng.normal(0, 3), FOV_MM[2] - az - 2)
    yaw = rng.normal(0, 0.06)
    cos, sin = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
    layers = np.array(
        [rng.uniform(1.5, 3), rng.uniform(4, 7), rng.uniform(2.5, 6), rng.uniform(1.5, 2.5)]
    )  # CSF, skull, fat, skin thickness in mm
    r_mean = (ax + ay + az) / 3

    # Everything outside the head's box is air (0), so the work scales with the head.
    reach = np.array([az, max(ax, ay), max(ax, ay)]) * (1 + (layers.sum() + 4) / min(ax, ay, az))
    step = np.array([sz, sy, sx])
    box = _box(np.array([cz, cy, cx]), reach, step / 2, step, np.array([nz, ny, nx]))
    assert box is not None  # the brain centre always lies inside the field of view
    z, y, x = (
        ((np.arange(n)[b] + 0.5) * s - c).astype(np.float32)
        for n, b, s, c in zip((nz, ny, nx), box, (sz, sy, sx), (cz, cy, cx), strict=True)
    )
    local = (z, y, x)
    xr = cos * x[None, :] + sin * y[:, None]  # brain frame, (ny, nx)
    yr = -sin * x[None, :] + cos * y[:, None]
    q = (xr / np.float32(ax)) ** 2 + (yr / np.float32(ay)) ** 2
    r = np.sqrt(q[None, :, :] + ((z / np.float32(az)) ** 2)[:, None, None])
    r *= 1 + 0.035 * smooth_field(rng, local, 40.0)
    e = (r - 1) * np.float32(r_mean)
    del r

    # Shells outside the brain; inside, a cortical ribbon of varying thickness over white matter,
    # sulci (thin sheets where a smooth field crosses zero) and the interhemispheric fissure.
    k = (e >= 0).astype(np.uint8)
    for bound in np.cumsum(layers):
        k += e >= bound
    lab = np.array([GM, CSF, SKULL, FAT, SKIN, AIR], dtype=np.uint8)[k]
    del k
    brain = e < 0
    cortex = 5.0 + 3.0 * smooth_field(rng, local, 10.0)
    np.maximum(cortex, 1.5, out=cortex)
    cortex += e  # > 0 within the ribbon: depth below the surface < the ribbon's thickness
    lab[brain & (cortex <= 0)] = WM
    sulci = np.abs(smooth_field(rng, local, 8.0)) < 0.09
    sulci &= cortex > 0.5
    sulci &= brain
    lab[sulci] = CSF
    del cortex, sulci
    fissure = (np.abs(xr) < rng.uniform(0.8, 1.6))[None] & (
        (z > 0.2 * az)[:, None, None] | (np.abs(yr) > 0.45 * ay)[None]
    )
    lab[fissure & brain] = CSF
    del fissure

    head = _Head(box, local, (cx, cy, cz), (ax, ay, az), yaw, lab, e)
    # Deep grey matter; ventricles whose width varies (atrophy); choroid plexus; sagittal sinus.
    for side in (-1, 1):
        centre = head.to_local(side * 0.3 * ax, 0.0, -0.05 * az)
        _paint_ellipsoid(lab, local, centre, (0.15 * az, 0.2 * ay, 0.14 * ax), GM, brain)
    vent_w = rng.uniform(2.5, 9.0)
    for side in (-1, 1):
        off = side * (vent_w + 1.5)
        centre = head.to_local(off, 0.05 * ay, 0.12 * az)
        _paint_ellipsoid(lab, local, centre, (0.13 * az, 0.33 * ay, vent_w), VENT, brain)
        centre = head.to_local(off, -0.2 * ay, 0.1 * az)
        _paint_ellipsoid(lab, local, centre, (3.0, 5.0, min(2.5, vent_w)), PLEXUS, brain)
    centre = head.to_local(0.0, 0.0, -0.02 * az)
    _paint_ellipsoid(lab, local, centre, (8.0, 12.0, 1.5), VENT, brain)
    sinus = (np.abs(xr) < 3.0)[None] & (e > -1.5) & (e < layers[0] + 1.0)
    sinus &= (z > 0.15 * az)[:, None, None]
    lab[sinus] = SINUS
    del sinus
    in_fat = lab == FAT
    for _ in range(int(rng.integers(2, 7))):  # bright scalp spots: the volume max varies
        ez, ey, ex = rng.uniform(-1, 1, size=3) * np.array([az, ay, ax]) * 1.05
        radii = tuple(rng.uniform(2, 5, size=3))
        _paint_ellipsoid(lab, local, head.to_local(ex, ey, ez), radii, SPOT, in_fat)
    return head


def _tumour_centre(
    rng: np.random.Generator, head: _Head, shape: tuple[int, int, int]
) -> np.ndarray:
    """A tumour centre (local z, y, x mm) in one hemisphere, spread along the slice axis.

    Along the slice axis the centre is drawn around the middle of the central slab, normal
    with a standard deviation of Z_SD_MM: as in BraTS, most tumours overlap the slab that
    preprocessing keeps, some lie partly or wholly outside it. Centres stay inside the brain.
    """
    sz = spacing_of(shape)[2]
    ax, ay, az = head.semi_axes
    cz = head.centre[2]
    slab_mid = ((shape[2] - SLAB) // 2 + SLAB / 2) * sz  # mm
    side = 1.0 if rng.random() < 0.5 else -1.0
    tz = slab_mid - cz  # the slab's middle, should no draw fit (never seen)
    for _ in range(200):  # z first, so that its distribution is not bent by the fit in-plane
        z = slab_mid + rng.normal(0.0, Z_SD_MM) - cz
        if (z / az) ** 2 < 0.6**2 - 0.15**2:  # leaves room for the in-plane offset below
            tz = z
            break
    for _ in range(200):
        bx = side * rng.uniform(0.15, 0.55) * ax
        by = rng.uniform(-0.55, 0.55) * ay
        if (bx / ax) ** 2 + (by / ay) ** 2 + (tz / az) ** 2 < 0.6**2:
            return head.to_local(bx, by, tz)
    return head.to_local(side * 0.15 * ax, 0.0, tz)  # inside the bound above: always fits


def _paint_tumour(
    rng: np.random.Generator, head: _Head, grade: str, tp: dict[str, Any], centre: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Paint oedema, core, necrosis and enhancement into `head.lab`; return (box, texture)."""
    radii = tp["radii"]
    ef = tp["oedema_factor"]
    half = np.full(3, radii.max() * ef * 1.35 + 2.0)
    lo = np.array([a[0] for a in head.local])
    step = np.array([a[1] - a[0] if len(a) > 1 else 1.0 for a in head.local])
    box = _box(centre, half, lo, step, np.array(head.lab.shape))
    if box is None:
        return None
    tz, ty, tx = (a[b] - c for a, b, c in zip(head.local, box, centre, strict=True))
    cphi, sphi = math.cos(tp["yaw"]), math.sin(tp["yaw"])
    ux = cphi * tx[None, :] + sphi * ty[:, None]
    uy = -sphi * tx[None, :] + cphi * ty[:, None]
    qxy = (ux / radii[2]) ** 2 + (uy / radii[1]) ** 2
    rho = np.sqrt(qxy[None] + ((tz / radii[0]) ** 2)[:, None, None]).astype(np.float32)
    coords = (tz, ty, tx)
    rho_core = rho * (1 + 0.10 * smooth_field(rng, coords, 8.0))  # lobulated core
    rho_oed = rho * np.clip(1 - 0.2 * smooth_field(rng, coords, 10.0), 0.5, None)  # fingers
    patch = smooth_field(rng, coords, 6.0)
    texture = 1 + 0.06 * smooth_field(rng, coords, 5.0)
    inside = head.outside[box] < 0
    sub = head.lab[box]
    sub[inside & (rho_oed < ef)] = OEDEMA
    core = inside & (rho_core < 1)
    if grade == "HGG":
        sub[core] = ENHANCING
        sub[core & (rho_core < tp["necrosis_fraction"])] = NECROSIS
    else:
        sub[core] = CORE
        if tp["enhancement"] > 0:  # atypical LGG: faint, patchy enhancement
            sub[core & (patch > 0.6)] = ENHANCING
    return box, texture


def _render(
    rng: np.random.Generator,
    lab: np.ndarray,
    contrast: dict[str, np.ndarray],
    local: tuple[np.ndarray, np.ndarray, np.ndarray],
    tumour: tuple[tuple[slice, slice, slice], np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """Per-modality float32 images over the box: contrast, tumour texture, bias, noise, gain."""
    head_mask = lab != AIR
    selected = lab[tumour[0]] >= OEDEMA if tumour is not None else None
    # One pool of normal noise; each image's two channels read it at distinct offsets
    # (i.i.d. within every image, independent across images at a voxel, 8x cheaper to draw).
    n_vox = lab.size
    pool = rng.standard_normal(n_vox + 8 * NOISE_OFFSET, dtype=np.float32)
    windows = iter(range(8))
    noise = np.empty(lab.shape, dtype=np.float32)
    images = {}
    for name in MODALITIES:
        gain = np.float32(rng.uniform(250, 1100))
        sigma = np.float32(rng.uniform(0.015, 0.04))
        img = np.take(contrast[name], lab)
        if tumour is not None:
            sub = img[tumour[0]]
            sub[selected] *= tumour[1][selected]
        img *= np.exp(0.12 * smooth_field(rng, local, 80.0))  # smooth multiplicative bias
        img += _window(pool, next(windows), n_vox, lab.shape, sigma, noise)  # Rician-like:
        np.square(img, out=img)  # |signal + n1 + i n2|
        np.square(_window(pool, next(windows), n_vox, lab.shape, sigma, noise), out=noise)
        img += noise
        np.sqrt(img, out=img)
        img *= gain
        img *= head_mask  # air stays exactly 0, as in BraTS
        np.rint(img, out=img)
        np.clip(img, 0, 32767, out=img)
        images[name] = img
    return images


def make_phantom(seed: int, index: int, grade: str, shape: tuple[int, int, int]) -> Phantom:
    """Generate one patient from ``default_rng([seed, index])``: volumes, segmentation, truth."""
    rng = np.random.default_rng([seed, index])
    nx, ny, nz = shape
    head = _make_head(rng, shape)
    tp = _tumour_params(rng, grade)
    centre = _tumour_centre(rng, head, shape)
    tumour = _paint_tumour(rng, head, grade, tp, centre)
    contrast = _contrast_table(rng, tp["enhancement"])
    images = _render(rng, head.lab, contrast, head.local, tumour)

    volumes = {}
    for name, img in images.items():
        vol = np.zeros((nz, ny, nx), dtype=np.int16)
        vol[head.box] = img
        volumes[name] = vol.T  # (X, Y, Z), Fortran-ordered: written without a copy
    tissue = np.zeros((nz, ny, nx), dtype=np.uint8)
    tissue[head.box] = head.lab
    seg = SEG_OF_LABEL[tissue]

    spacing = spacing_of(shape)
    centre_mm = centre[::-1] + np.array(head.centre)  # (x, y, z) in the field of view
    centre_vox = [
        int(np.clip(np.floor(c / s), 0, n - 1))
        for c, s, n in zip(centre_mm, spacing, shape, strict=True)
    ]
    slab0 = (nz - SLAB) // 2
    counts = np.bincount(seg.ravel(), minlength=5)
    total = int(counts[1:].sum())
    in_slab = int(np.count_nonzero(seg[slab0 : slab0 + SLAB]))  # seg is (z, y, x) here
    radii = tp["radii"]
    truth = {
        "grade": grade,
        "label": int(grade == "HGG"),
        "centre_x": centre_vox[0],
        "centre_y": centre_vox[1],
        "centre_z": centre_vox[2],
        "centre_in_slab": int(slab0 <= centre_vox[2] < slab0 + SLAB),
        "radius_x_mm": round(float(radii[2]), 2),
        "radius_y_mm": round(float(radii[1]), 2),
        "radius_z_mm": round(float(radii[0]), 2),
        "oedema_factor": round(float(tp["oedema_factor"]), 3),
        "necrosis_fraction": round(float(tp["necrosis_fraction"]), 3),
        "enhancement": round(float(tp["enhancement"]), 3),
        "atypical": int(tp["atypical"]),
        "atypical_kind": tp["atypical_kind"],
        "voxels_necrotic_core": int(counts[1]),
        "voxels_oedema": int(counts[2]),
        "voxels_enhancing": int(counts[4]),
        "tumour_voxels": total,
        "tumour_voxels_in_slab": in_slab,
        "share_in_slab": round(in_slab / total, 4) if total else "",
    }
    return Phantom(
        volumes=volumes, seg=seg.T, tissue=tissue.T, affine=affine_of(shape), truth=truth
    )


def _window(
    pool: np.ndarray, k: int, n: int, shape: tuple[int, ...], sigma: np.float32, out: np.ndarray
) -> np.ndarray:
    """The `k`-th noise window of `pool`, scaled by `sigma`, written into `out`."""
    start = k * NOISE_OFFSET
    np.multiply(pool[start : start + n].reshape(shape), sigma, out=out)
    return out


# ----------------------------------------------------------------------------- writing


def nifti_bytes(data: np.ndarray, affine: np.ndarray, compress: bool) -> bytes:
    """A NIfTI-1 file's bytes; gzip (level 1, mtime 0, no name) when `compress`, so bytes repeat.

    zlib, not ISA-L: ISA-L's deflate was 6x faster but not deterministic across processes (the
    same volume compressed in a pytest process and in a joblib worker gave streams of 36,198
    and 36,194 bytes with the same content), which broke "same seed, same bytes". zlib level 1
    is also what nibabel and most tools write, so the demo's streams are like real BraTS files.
    """
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b"smri synth phantom"
    raw = img.to_bytes()
    if not compress:
        return raw
    return gzip.compress(raw, compresslevel=1, mtime=0)


def write_patient(
    seed: int, spec: PatientSpec, shape: tuple[int, int, int], root: Path, fmt: str
) -> dict[str, Any]:
    """Generate and write one patient's five files; return its truth row (runs in a worker)."""
    from threadpoolctl import threadpool_limits  # one BLAS thread: same floats for any --jobs

    with threadpool_limits(limits=1):
        ph = make_phantom(seed, spec.index, spec.grade, shape)
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    ext = "." + fmt
    parts = [(m, ph.volumes[m]) for m in MODALITIES] + [("seg", ph.seg)]
    with ExitStack() as staged:  # all five are written before any takes its real name
        for name, data in parts:
            tmp = staged.enter_context(atomic_path(folder / f"{spec.patient_id}_{name}{ext}"))
            tmp.write_bytes(nifti_bytes(data, ph.affine, compress=fmt == "nii.gz"))
    return {"patient_id": spec.patient_id, **ph.truth}


def _csv_text(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def name_mapping_rows(specs: list[PatientSpec]) -> list[dict[str, str]]:
    """BraTS 2020 `name_mapping.csv` rows for the cohort (earlier-year ids made up alike)."""
    return [
        {
            "Grade": s.grade,
            "BraTS_2017_subject_ID": f"Brats17_SYN_{s.index:04d}_1",
            "BraTS_2018_subject_ID": f"Brats18_SYN_{s.index:04d}_1",
            "TCGA_TCIA_subject_ID": "NA",
            "BraTS_2019_subject_ID": f"BraTS19_SYN_{s.index:04d}_1",
            "BraTS_2020_subject_ID": s.patient_id,
        }
        for s in specs
    ]


def own_entries(root: Path) -> list[Path]:
    """Entries of `root` named as `smri synth` names them (any layout): what --overwrite removes."""
    return [p for p in sorted(root.iterdir()) if _is_own(p.name) and p.name != MARKER]


def _is_own(name: str) -> bool:
    return (
        name in {"HGG", "LGG", "truth.csv", "name_mapping.csv"}
        or name.startswith(("BraTS19_SYN_", "BraTS20_Training_"))
        or name.endswith(PARTIAL_SUFFIX)
    )


def prepare_output(root: Path, overwrite: bool) -> None:
    """Create `root`, or clear a previous synth cohort there with `overwrite`; refuse otherwise.

    Only a folder that carries synth's marker file has entries removed, so `--overwrite` never
    deletes a real BraTS copy that happens to use the same names.
    """
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a folder", option="OUT")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{root} is not empty; pass --overwrite to replace a cohort there", option="OUT"
            )
        entries = own_entries(root)
        if entries and not (root / MARKER).is_file():
            names = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ConfigError(
                f"{root} holds {names}, which smri synth did not write (no {MARKER} file); "
                "refusing to delete them: choose an empty folder",
                option="--overwrite",
            )
        for p in entries:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by smri synth; `smri synth --overwrite` may replace it\n")


def remove_partials(root: Path) -> None:
    """Delete the `.partial` files (and emptied patient folders) an interrupted run left."""
    for p in root.rglob(f".*{PARTIAL_SUFFIX}"):
        p.unlink(missing_ok=True)
    folders = [p for p in root.rglob("*") if p.is_dir() and _is_own(p.name)]
    for d in sorted(folders, key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def synthesize(
    cfg: SynthConfig,
    root: Path,
    *,
    jobs: int = -1,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Write the cohort `cfg` under `root` (parallel over patients); return the truth rows."""
    cfg.validate()
    root = Path(root)
    prepare_output(root, overwrite)
    specs = cohort(cfg)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        rows = list(_run(cfg, specs, root, jobs, progress))
        rows.sort(key=lambda r: r["patient_id"])
        write_text(root / "truth.csv", _csv_text(TRUTH_COLUMNS, rows))
        if cfg.layout == "2020":
            write_text(
                root / "name_mapping.csv",
                _csv_text(NAME_MAPPING_COLUMNS, name_mapping_rows(specs)),
            )
    except BaseException:
        remove_partials(root)
        raise
    return rows


def _run(
    cfg: SynthConfig, specs: list[PatientSpec], root: Path, jobs: int, progress: bool
) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    n_jobs = min(_effective_jobs(jobs), len(specs))
    bar = tqdm(total=len(specs), desc="synth", unit="patient", disable=not progress)
    with bar:
        if n_jobs == 1:
            for spec in specs:
                yield write_patient(cfg.seed, spec, cfg.shape, root, cfg.fmt)
                bar.update()
            return
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(write_patient)(cfg.seed, spec, cfg.shape, root, cfg.fmt) for spec in specs
        )
        for row in results:
            yield row
            bar.update()


def _effective_jobs(jobs: int) -> int:
    if jobs == 0:
        raise ConfigError("--jobs must not be 0 (use -1 for all cores)", option="--jobs")
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + jobs) if jobs < 0 else jobs


# ----------------------------------------------------------------------------- difficulty


def phantom_features(seed: int, index: int, grade: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Intensity-baseline features of one phantom after the preprocessing (min–max, central
    slab): `smri.baseline.intensity_features`."""
    from threadpoolctl import threadpool_limits

    from smri.metrics import intensity_features
    from smri.volume import central_slab, minmax_normalize

    with threadpool_limits(limits=1):
        ph = make_phantom(seed, index, grade, shape)
    slab = np.stack([central_slab(minmax_normalize(ph.volumes[m]), SLAB) for m in MODALITIES])
    return intensity_features(slab)


def stats_only_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of the intensity baseline (`smri.baseline`; 5 folds, 4 repeats)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from smri.metrics import fit_predict

    aucs = []
    for rep in range(4):
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed + rep)
        scores = np.zeros(len(labels))
        for train, test in folds.split(features, labels):
            scores[test] = fit_predict(features, labels, train, test)
        aucs.append(roc_auc_score(labels, scores))
    return float(np.mean(aucs))
