"""Saliency: which voxels of each modality drove a model's prediction, and how much of that lies
inside the tumour.

The method is integrated gradients (Sundararajan, Taly & Yan 2017): the attribution of voxel v is
``(x_v - b_v) * mean over alpha of d logit / d x_v at b + alpha (x - b)``, with the all-zeros
baseline b (the background of min–max normalised volumes). It is chosen over Grad-CAM because

- it is voxel-sized: Grad-CAM on the last conv block sees the input through four poolings
  (2 slices x H/16 x W/16 of a 32-slice slab), too coarse to say whether the evidence lies in a
  tumour a few voxels across, and its upsampling smears it over the tumour's border;
- it is complete: the attributions sum to ``logit(x) - logit(b)``, so a share of them is a share
  of the model's decision (`Attribution.completeness_error` says how well `steps` achieved it);
- it needs nothing of the architecture (CNN1's flatten, the SE gates and the LSTM alike).

It costs `steps` forward and backward passes per patient. Attributions are signed toward the
predicted class: positive voxels pushed the model toward what it predicted. The functions here
are pure: a model and arrays in, arrays and numbers out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from smri.config import SALIENCY_STEPS

DEFAULT_STEPS = SALIENCY_STEPS
METHOD = "integrated gradients"
BASELINE = "zeros (the background of the normalised volumes)"


@dataclass(frozen=True)
class Attribution:
    """One patient's integrated gradients toward its predicted class.

    `attributions` is ``(M, S, H, W)`` float32, the input's shape; `logit` the model's output
    for the patient and `baseline_logit` for the all-zeros input.
    """

    attributions: np.ndarray
    logit: float
    baseline_logit: float
    completeness_error: float  # |sum(attributions) - |logit - baseline_logit|| / that difference

    @property
    def probability(self) -> float:
        """The model's probability of class 1."""
        return float(1.0 / (1.0 + np.exp(-self.logit)))


@contextlib.contextmanager
def _rnn_backward_allowed(model: nn.Module) -> Iterator[None]:
    """Let recurrent layers run a backward pass in an eval-mode model.

    cuDNN computes an RNN's backward only in training mode. A one-layer LSTM has no dropout
    (nn.LSTM's dropout acts between layers), so in training mode it computes the same function;
    the rest of the model (BatchNorm, dropout) stays in eval mode. Deeper RNNs fall back to
    PyTorch's own kernels instead.
    """
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    plain = all(m.num_layers == 1 or m.dropout == 0 for m in rnns)
    modes = [m.training for m in rnns]
    try:
        if plain:
            for m in rnns:
                m.train()
        with torch.backends.cudnn.flags(enabled=plain and torch.backends.cudnn.enabled):
            yield
    finally:
        for m, mode in zip(rnns, modes, strict=True):
            m.train(mode)


def integrated_gradients(
    model: nn.Module, images: torch.Tensor, *, steps: int = DEFAULT_STEPS, batch_size: int = 8
) -> Attribution:
    """Integrated gradients of `model`'s logit for one patient, toward its predicted class.

    `model` maps ``(B, M, S, H, W)`` to logits ``(B,)`` and is in eval mode; `images` is one
    patient ``(M, S, H, W)`` (float32, on the model's device). The path integral is the midpoint
    rule over `steps` points, run `batch_size` points at a time; computed in float32.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x = images.detach().float().unsqueeze(0)
    grads = torch.zeros_like(x[0])
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps
    with _rnn_backward_allowed(model), torch.enable_grad():
        for chunk in alphas.split(batch_size):
            path = (chunk[:, None, None, None, None] * x).requires_grad_(True)
            (g,) = torch.autograd.grad(model(path).sum(), path)
            grads += g.sum(dim=0)
        with torch.no_grad():
            ends = model(torch.cat([x, torch.zeros_like(x)]))
    logit, base = float(ends[0]), float(ends[1])
    sign = 1.0 if logit >= 0 else -1.0  # toward the predicted class
    attr = (sign * x[0] * grads / steps).cpu().numpy().astype(np.float32)
    target = abs(logit - base)
    error = abs(float(attr.sum(dtype=np.float64)) - sign * (logit - base)) / max(target, 1e-12)
    return Attribution(attr, logit, base, error)


def share_inside(saliency: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the positive saliency that lies inside `mask`, in [0, 1].

    `saliency` is ``(..., S, H, W)`` (one volume, or ``(M, S, H, W)`` for all modalities);
    `mask` is ``(S, H, W)``, inside where non-zero (a segmentation: label > 0), applied to every
    leading index. Negative saliency counts for nothing. None when no voxel is positive.
    """
    if saliency.shape[-3:] != mask.shape:
        raise ValueError(f"saliency {saliency.shape} and mask {mask.shape} disagree")
    positive = np.clip(saliency, 0, None, dtype=np.float64)
    total = float(positive.sum())
    if total <= 0:
        return None
    return float(positive[..., mask > 0].sum()) / total


def share_by_modality(saliency: np.ndarray) -> np.ndarray:
    """Each modality's share of the positive saliency of ``(M, S, H, W)``: ``(M,)``, sums to 1
    (zeros when nothing is positive)."""
    per = np.clip(saliency, 0, None, dtype=np.float64).sum(axis=(1, 2, 3))
    return per / per.sum() if per.sum() > 0 else per


def chance_share(images: np.ndarray, mask: np.ndarray) -> float | None:
    """The share a saliency spread evenly over the head would put in the tumour: tumour voxels
    over head voxels (non-zero in any modality) of the slab. `images` ``(M, S, H, W)``, `mask`
    ``(S, H, W)``; None for an empty slab."""
    head = (images != 0).any(axis=0)
    n = int(head.sum())
    return int(((mask > 0) & head).sum()) / n if n else None
