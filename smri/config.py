"""The model and training settings: frozen dataclasses whose defaults are smri's only defaults.

Light to import (no torch), so the CLI takes its option defaults and choices from here while
`smri --help` stays instant; `smri.networks` and `smri.training` re-export these classes. The
preprocessing settings live beside their code (`smri.preprocessing.PreprocessConfig`,
`smri.phantoms.SynthConfig`), which is light as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL_NAMES = ("cnn1", "cnn2", "cnn3")
# Saliency (`smri explain`, `smri evaluate`; smri.evaluation.saliency): integrated-gradients
# steps, and the mean share of positive saliency inside the tumour below which a model is called
# out.
SALIENCY_STEPS = 32
MOSTLY_OUTSIDE = 0.5
CACHE_MODES = ("auto", "device", "ram", "none")
CLASS_WEIGHTS = ("auto", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved in every checkpoint."""

    name: str = "cnn2"
    volume_shape: tuple[int, int, int] = (32, 240, 240)  # (S, H, W) of one modality volume
    width: float = 1.0
    hidden: int = 128
    # none in the seed; 0 was chosen by 5-fold cross-validation on the demo cohort
    # (docs/results.md, "Defaults chosen by cross-validation")
    dropout: float = 0.0
    fc: int = 256  # CNN1's embedding size
    se_reduction: int = 8  # CNN3
    # in-plane average pooling of each volume before the first conv block; none in the seed
    # (1). At in-plane sizes well above the blocks' 46-voxel receptive field, CNN2 needs it to
    # learn (docs/results.md, "Learning as the geometry grows").
    input_pool: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of dataclasses.asdict (lists back to tuples)."""
        d = dict(d)
        d["volume_shape"] = tuple(int(s) for s in d["volume_shape"])
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; saved in config.json and in every checkpoint."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int | None = None
    class_weight: str = "auto"
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    cache: str = "auto"
    workers: int = 4
    # not in the seed; chosen by 5-fold cross-validation on the demo cohort (docs/results.md)
    augment: bool = True
    jobs: int = 1  # folds trained at once, each in its own process (CPU cross-validation)
    # repeated training: every fold (or the one split) trained `seeds` times, each with its own
    # initialisation, batch order, flips and dropout; the splits stay those of `seed`
    seeds: int = 1
    repeat: int = 0  # which of the `seeds` trainings this is (set by smri for each one)
    # a CSV of patients set aside as the untouched test set (smri.data.holdout): never
    # trained or validated on
    holdout: str | None = None

    @property
    def init_seed(self) -> int:
        """The seed of initialisation, batch order, flips and dropout: `seed` itself for the
        first training (so a run with one seed is what it always was), another for each
        repeat."""
        return self.seed if self.repeat == 0 else self.seed + 1_000_003 * self.repeat

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of asdict; unknown keys ignored."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
