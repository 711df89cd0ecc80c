"""Building blocks of the CNNs: the conv block and the Squeeze-and-Excitation block."""

from __future__ import annotations

import torch
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


class ConvBlock(nn.Module):
    """Conv3d(k=3, pad=1) -> BatchNorm3d -> ReLU [-> SE] -> MaxPool3d(2): halves D, H and W."""

    def __init__(self, in_channels: int, out_channels: int, se_reduction: int | None = None):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SEBlock(out_channels, se_reduction) if se_reduction else nn.Identity()
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, D, H, W) -> (N, C_out, D // 2, H // 2, W // 2)."""
        return self.pool(self.se(self.relu(self.bn(self.conv(x)))))
