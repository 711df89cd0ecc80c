"""The architectures: conv/SE blocks, the three CNNs, the CNN-LSTM, the cnn1/2/3 registry."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from smri.config import MODEL_NAMES, ModelConfig
from smri.errors import ConfigError
from smri.networks.blocks import ConvBlock, SEBlock, pad_first_conv
from smri.networks.cnn import (
    CNN1,
    CNN2,
    CNN3,
    MIN_SIZE,
    channels,
    field_note,
    pooled_shape,
    receptive_field,
)
from smri.networks.lstm import CNNLSTM

__all__ = [
    "CNN1",
    "CNN2",
    "CNN3",
    "CNNLSTM",
    "MIN_SIZE",
    "MODEL_NAMES",
    "ConvBlock",
    "ModelConfig",
    "SEBlock",
    "build_model",
    "check_config",
    "count_parameters",
    "field_note",
    "pad_first_conv",
    "pooled_shape",
    "receptive_field",
]


# What smri builds at most: 1e9 parameters are 4 GB of float32 weights (16 GB with Adam's
# state and the gradients); CNN1 at width 1 and BraTS geometry has 15 million.
MAX_PARAMETERS = 10**9
MAX_AXIS = 4096  # voxels per axis of a volume
MAX_UNITS = 65536  # LSTM hidden units, CNN1's FC units


def check_config(cfg: ModelConfig) -> None:
    """ConfigError naming the setting when `cfg` cannot be built, or would be larger than
    MAX_PARAMETERS: checked on PyTorch's meta device (no memory), before anything is allocated.
    `--width 1e6` had asked for 10^16 parameters and died in the allocator."""
    if cfg.name not in MODEL_NAMES:
        raise ConfigError(
            f"unknown model {cfg.name!r}; choose one of {', '.join(MODEL_NAMES)}", option="--model"
        )
    channels(cfg.width)  # finite and positive
    if not 0 <= cfg.dropout < 1:  # NaN fails too
        raise ConfigError(f"must be in [0, 1), got {cfg.dropout}", option="--dropout")
    shape = tuple(cfg.volume_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and 1 <= n <= MAX_AXIS for n in shape):
        raise ConfigError(
            f"volume shape {shape} is not 3 sizes from 1 to {MAX_AXIS} (slices, height, width)"
        )
    for name, value in (("hidden", cfg.hidden), ("fc", cfg.fc), ("se_reduction", cfg.se_reduction)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_UNITS:
            raise ConfigError(
                f"model setting {name} = {value!r} is not an integer in 1..{MAX_UNITS}"
            )
    k = cfg.input_pool
    if not isinstance(k, numbers.Integral) or isinstance(k, bool | np.bool_) or k < 1:
        raise ConfigError(f"must be a whole number >= 1, got {k!r}", option="--input-pool")
    if shape[1] % k or shape[2] % k:
        raise ConfigError(
            f"the in-plane size {shape[1]}x{shape[2]} is not a multiple of {k}; choose a "
            + (
                f"divisor of {shape[1]}"
                if shape[1] == shape[2]
                else f"common divisor of {shape[1]} and {shape[2]}"
            ),
            option="--input-pool",
        )
    with torch.device("meta"):
        n = count_parameters(_construct(cfg))
    if n > MAX_PARAMETERS:
        raise ConfigError(
            f"{cfg.name} at width {cfg.width:g} on volumes of {'x'.join(map(str, shape))} would "
            f"have {n:.3g} parameters ({4 * n / 2**30:,.0f} GiB of weights); smri builds models "
            f"of at most {MAX_PARAMETERS:.0e} parameters",
            option="--width",
        )


def build_model(cfg: ModelConfig) -> CNNLSTM:
    """The CNN-LSTM named by `cfg.name` ('cnn1', 'cnn2' or 'cnn3'), after `check_config`."""
    check_config(cfg)
    return _construct(cfg)


def _construct(cfg: ModelConfig) -> CNNLSTM:
    shape, k = tuple(cfg.volume_shape), int(cfg.input_pool)
    if cfg.name == "cnn1":
        cnn: nn.Module = CNN1(shape, cfg.width, fc=cfg.fc, dropout=cfg.dropout, input_pool=k)
    elif cfg.name == "cnn2":
        cnn = CNN2(shape, cfg.width, input_pool=k)
    elif cfg.name == "cnn3":
        cnn = CNN3(shape, cfg.width, reduction=cfg.se_reduction, input_pool=k)
    else:
        raise ConfigError(
            f"unknown model {cfg.name!r}; choose one of {', '.join(MODEL_NAMES)}", option="--model"
        )
    return CNNLSTM(cnn, hidden=cfg.hidden, dropout=cfg.dropout)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
