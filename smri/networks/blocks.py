"""Building blocks of the CNNs: the conv block and the Squeeze-and-Excitation block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    """Squeeze-and-Excitation: rescale each channel by a gate in (0, 1) computed from its mean.

    Global average pool -> Linear(C, max(C // reduction, min_hidden)) -> ReLU -> Linear -> sigmoid.
    """

    def __init__(self, channels: int, reduction: int = 8, min_hidden: int = 4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gates (N, C) in (0, 1) for x of shape (N, C, D, H, W)."""
        squeezed = x.mean(dim=(2, 3, 4))
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> (N, C, D, H, W), each channel scaled by its gate."""
        return x * self.gates(x)[:, :, None, None, None]


class PaddableConv3d(nn.Conv3d):
    """A Conv3d that can run as if it had `run_channels` input channels (zeros added).

    The function, the parameters and the checkpoint keys are those of the plain Conv3d: the
    extra input channels are zeros and so are their weights, added on the fly. It exists for
    the first convolution, whose single input channel keeps cuDNN off its tensor-core kernels
    (which want a multiple of 8 channels in bf16); see `pad_first_conv`. Off (0) by default.
    """

    run_channels: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv3d of x, computed on zero-padded channels when `run_channels` asks for more."""
        extra = self.run_channels - self.in_channels
        if extra <= 0:
            return super().forward(x)
        if torch.is_autocast_enabled(x.device.type):  # pad in the compute dtype, not float32
            x = x.to(torch.get_autocast_dtype(x.device.type))
        fmt = torch.channels_last_3d if x.is_cuda else torch.contiguous_format
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra)).contiguous(memory_format=fmt)
        weight = F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, extra)).to(x.dtype)
        weight = weight.contiguous(memory_format=fmt)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv3d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvBlock(nn.Module):
    """Conv3d(k=3, pad=1) -> BatchNorm3d -> ReLU [-> SE] -> MaxPool3d(2): halves D, H and W."""

    def __init__(self, in_channels: int, out_channels: int, se_reduction: int | None = None):
        super().__init__()
        self.conv = PaddableConv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SEBlock(out_channels, se_reduction) if se_reduction else nn.Identity()
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, D, H, W) -> (N, C_out, D // 2, H // 2, W // 2)."""
        return self.pool(self.se(self.relu(self.bn(self.conv(x)))))


def pad_first_conv(model: nn.Module, channels: int = 8) -> nn.Module:
    """Run every single-input-channel convolution of `model` on `channels` zero-padded ones.

    Same outputs and gradients for the real weights (tested); an execution choice like
    channels_last, not a different model. Returns `model`. `channels=0` turns it off.
    """
    for m in model.modules():
        if isinstance(m, PaddableConv3d) and m.in_channels == 1:
            m.run_channels = channels
    return model
