"""The CNN-LSTM: a shared CNN embeds each modality volume, an LSTM reads the modality sequence."""

from __future__ import annotations

import torch
from torch import nn


class CNNLSTM(nn.Module):
    """(B, M, S, H, W) -> CNN on B*M volumes -> (B, M, F) -> LSTM(F, hidden) -> dropout -> logit."""

    # channels-last is what cuDNN's and oneDNN's fast 3D convolutions want, on GPU and CPU
    # (benchmarks/bench_train.py measures it against the contiguous layout)
    memory_format = torch.channels_last_3d

    def __init__(self, cnn: nn.Module, hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        self.cnn = cnn
        self.lstm = nn.LSTM(cnn.out_features, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, S, H, W) -> logits (B,)."""
        b, m = x.shape[:2]
        volumes = x.reshape(b * m, 1, *x.shape[2:]).contiguous(memory_format=self.memory_format)
        emb = self.cnn(volumes).reshape(b, m, -1)
        # The LSTM runs in float32 even under autocast: it is tiny and keeps the recurrence exact.
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, (h_n, _) = self.lstm(emb.float())
        return self.fc(self.dropout(h_n[-1])).squeeze(1)
