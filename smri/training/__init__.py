"""Training: a run folder from a store, for one split or K folds, on one process or under torchrun.

`plan` checks the store and settings before anything is written; `fit` trains one split
(`loop`: one epoch and one evaluation); `folds` runs K folds (on the CPU in a process pool);
`run.train` starts or resumes the run folder, whose files `runs` reads and writes;
`distributed` is the torchrun side; `tensorboard` the optional event files.
"""

from smri.config import TrainConfig
from smri.training.distributed import SINGLE, Dist
from smri.training.loop import NonFiniteOutput, evaluate, train_one_epoch
from smri.training.plan import check_global_batch, describe
from smri.training.run import load_run_config, train

__all__ = [
    "SINGLE",
    "Dist",
    "NonFiniteOutput",
    "TrainConfig",
    "check_global_batch",
    "describe",
    "evaluate",
    "load_run_config",
    "train",
    "train_one_epoch",
]
