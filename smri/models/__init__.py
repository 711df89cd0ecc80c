"""Models: conv/SE blocks, the three CNNs, the CNN-LSTM and the `cnn1/cnn2/cnn3` registry."""

from __future__ import annotations

from torch import nn

from smri.config import MODEL_NAMES, ModelConfig
from smri.errors import ConfigError
from smri.models.blocks import ConvBlock, SEBlock, pad_first_conv
from smri.models.cnn import CNN1, CNN2, CNN3, MIN_SIZE, pooled_shape
from smri.models.lstm import CNNLSTM

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
    "count_parameters",
    "pad_first_conv",
    "pooled_shape",
]


def build_model(cfg: ModelConfig) -> CNNLSTM:
    """The CNN-LSTM named by `cfg.name` ('cnn1', 'cnn2' or 'cnn3')."""
    shape = tuple(cfg.volume_shape)
    if cfg.name == "cnn1":
        cnn: nn.Module = CNN1(shape, cfg.width, fc=cfg.fc, dropout=cfg.dropout)
    elif cfg.name == "cnn2":
        cnn = CNN2(shape, cfg.width)
    elif cfg.name == "cnn3":
        cnn = CNN3(shape, cfg.width, reduction=cfg.se_reduction)
    else:
        raise ConfigError(
            f"unknown model {cfg.name!r}; choose one of {', '.join(MODEL_NAMES)}", option="--model"
        )
    return CNNLSTM(cnn, hidden=cfg.hidden, dropout=cfg.dropout)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
