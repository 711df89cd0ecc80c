"""The three per-volume CNNs: CNN1 (flatten + FC), CNN2 (global pooling), CNN3 (CNN2 + SE)."""

from __future__ import annotations

import math

import torch
from torch import nn

from smri.config import ModelConfig
from smri.errors import ConfigError
from smri.networks.blocks import ConvBlock

BASE_CHANNELS = (16, 32, 64, 128)
N_POOL = len(BASE_CHANNELS)
MIN_SIZE = 2**N_POOL  # each spatial dimension must survive four halvings


def channels(width: float) -> tuple[int, ...]:
    """Block widths 16-32-64-128 scaled by `width` (at least 1 channel each)."""
    if not math.isfinite(width):
        raise ConfigError(f"width must be a finite number, got {width}", option="--width")
    if width <= 0:
        raise ConfigError(f"width must be positive, got {width}", option="--width")
    return tuple(max(1, round(c * width)) for c in BASE_CHANNELS)


def pooled_shape(volume_shape: tuple[int, int, int], input_pool: int = 1) -> tuple[int, int, int]:
    """Spatial shape (D, H, W) after the input pooling and the four conv blocks; a clear error
    if it would vanish."""
    s, h, w = (int(n) for n in volume_shape) if len(volume_shape) == 3 else (0, 0, 0)
    shape = (s // MIN_SIZE, h // input_pool // MIN_SIZE, w // input_pool // MIN_SIZE)
    if min(shape) < 1:
        if input_pool > 1 and shape[0] >= 1 and min(h, w) >= MIN_SIZE:
            raise ConfigError(
                f"{input_pool} leaves {h // input_pool}x{w // input_pool} voxels in-plane, "
                f"too few for {N_POOL} pooling stages (at least {MIN_SIZE}); choose "
                f"at most {min(h, w) // MIN_SIZE}",
                option="--input-pool",
            )
        raise ConfigError(
            f"volume shape (S, H, W) = {tuple(volume_shape)} is too small for {N_POOL} pooling "
            f"stages: every dimension must be at least {MIN_SIZE} (e.g. --slices {MIN_SIZE})"
        )
    return shape


def receptive_field(input_pool: int = 1) -> int:
    """In-plane input voxels one unit of the last block sees: 46 for the four conv blocks
    (3x3 conv then 2x2 max pooling each), times the input pooling."""
    field, step = 1, 1
    for _ in range(N_POOL):
        field += 2 * step + step  # the conv's two neighbours, then the pooling's second voxel
        step *= 2
    return field * input_pool


# The share of the slice a last-block unit must see for the global-pooling models to learn
# reliably, measured on the demo phantoms (docs/results.md, "Learning as the geometry grows"):
# CNN2 learnt in every fold at 0.96 (48x48) and 1.15 (40x40, and 120x120 pooled 3x3), failed in
# one fold of five at 0.77 (120x120 pooled 2x2) and in two of three at 0.38 (120x120).
FIELD_SHARE = 0.8


def field_note(cfg: ModelConfig) -> str | None:
    """A line for the run log when a global-pooling model's units see too little of the slice
    (under FIELD_SHARE of its smaller in-plane side), with the smallest --input-pool that
    fixes it. None for CNN1, which keeps every position."""
    name, input_pool = cfg.name, cfg.input_pool
    h, w = (int(n) for n in cfg.volume_shape[1:])
    side = min(h, w)
    if name == "cnn1" or receptive_field(input_pool) >= FIELD_SHARE * side:
        return None
    fits = [k for k in range(input_pool + 1, side // MIN_SIZE + 1)
            if h % k == 0 and w % k == 0 and receptive_field(k) >= FIELD_SHARE * side]  # fmt: skip
    advice = f"; --input-pool {fits[0]} gives them most of it" if fits else ""
    return (
        f"note: {name}'s last-block units each see {receptive_field(input_pool)} of the {h}x{w} "
        "voxels in-plane; on the demo, global pooling learnt reliably only when they saw most "
        f"of the slice (docs/results.md){advice}"
    )


class _Backbone(nn.Module):
    """[In-plane average pooling ->] four conv blocks, optionally with SE after each ReLU.

    `input_pool` K > 1 averages each slice over K x K voxels first (the seed has none): the
    blocks' receptive field of 46 voxels then spans 46·K input voxels. At in-plane sizes well
    above 46, CNN2 (global average pooling) learns little without it (docs/results.md).
    """

    def __init__(self, width: float, se_reduction: int | None, input_pool: int = 1):
        super().__init__()
        pool = (1, input_pool, input_pool)
        self.input_pool = nn.AvgPool3d(pool) if input_pool > 1 else nn.Identity()
        chans = channels(width)
        ins = (1, *chans[:-1])
        self.blocks = nn.Sequential(
            *(ConvBlock(i, o, se_reduction) for i, o in zip(ins, chans, strict=True))
        )
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, H, W) -> (N, C, S/16, H/16K, W/16K)."""
        return self.blocks(self.input_pool(x))


class CNN1(nn.Module):
    """Baseline: blocks -> flatten -> Linear(., fc) -> BatchNorm1d -> ReLU -> dropout.

    The FC layer is normalised before its ReLU, as every conv block is. Without it the FC
    units die: the flattened features are all >= 0 (post-ReLU, post-max-pool), so one Adam
    step moves a unit's pre-activation by about fan_in x lr at once, and a unit pushed below
    zero for every patient never gets a gradient again (84 % dead by epoch 8 at width 0.5; the
    model then stayed at chance). Cross-validated against the other fixes tried:
    studies/cnn1_dead_units/cnn1_candidates.py and docs/results.md.
    """

    def __init__(
        self,
        volume_shape: tuple[int, int, int],
        width: float = 1.0,
        fc: int = 256,
        dropout: float = 0.5,
        input_pool: int = 1,
    ):
        super().__init__()
        self.backbone = _Backbone(width, se_reduction=None, input_pool=input_pool)
        flat = self.backbone.out_channels * math.prod(pooled_shape(volume_shape, input_pool))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, fc),
            nn.BatchNorm1d(fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_features = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, H, W) -> (N, fc)."""
        return self.head(self.backbone(x))


class CNN2(nn.Module):
    """Conv blocks -> global average pooling -> 128·width embedding."""

    def __init__(
        self,
        volume_shape: tuple[int, int, int],
        width: float = 1.0,
        se_reduction: int | None = None,
        input_pool: int = 1,
    ):
        super().__init__()
        pooled_shape(volume_shape, input_pool)
        self.backbone = _Backbone(width, se_reduction=se_reduction, input_pool=input_pool)
        self.out_features = self.backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, H, W) -> (N, C)."""
        return self.backbone(x).mean(dim=(2, 3, 4))


class CNN3(CNN2):
    """CNN2 with a Squeeze-and-Excitation block after each ReLU, before the pooling (r = 8)."""

    def __init__(
        self,
        volume_shape: tuple[int, int, int],
        width: float = 1.0,
        reduction: int = 8,
        input_pool: int = 1,
    ):
        super().__init__(volume_shape, width, se_reduction=reduction, input_pool=input_pool)
