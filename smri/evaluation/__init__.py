"""Evaluation: a trained model (a checkpoint or an export) used on patients.

`inference` scores a store (`evaluate_store`: probabilities, metrics and, when asked, the share
of the saliency inside the tumour) and predicts raw patient folders (`predict_folders`);
`saliency` computes integrated gradients; `explanation` shows and reports them patient by
patient (`explain_store`, `smri explain`).
"""

from smri.evaluation.explanation import check_out, explain_store, percent
from smri.evaluation.inference import (
    Evaluation,
    Prediction,
    evaluate_store,
    predict_folders,
    saliency_in_tumour,
)

__all__ = [
    "Evaluation",
    "Prediction",
    "check_out",
    "evaluate_store",
    "explain_store",
    "percent",
    "predict_folders",
    "saliency_in_tumour",
]
