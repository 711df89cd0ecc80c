"""The README.md model card of an exported model: Hugging Face front matter, then sections.

A function of the export's config.json and the run's config.json: it computes nothing, and
prints an interval only where `smri train` recorded one.
"""

from __future__ import annotations

import math
from typing import Any

METRIC_LABELS = {"auc": "AUC", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy",
                 "sensitivity": "sensitivity", "specificity": "specificity"}  # fmt: skip


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _interval(ci95: dict | None, key: str) -> str:
    pair = (ci95 or {}).get(key)
    if isinstance(pair, list | tuple) and len(pair) == 2:
        return f"[{_num(pair[0])}, {_num(pair[1])}]"
    return "not computed"


def _metrics_table(best: dict, ci95: dict | None, names: dict[int, str]) -> list[str]:
    rows = ["| metric | value | 95% interval |", "|---|---|---|"]
    for key, label in METRIC_LABELS.items():
        ci = _interval(ci95, key) if key in ("auc", "balanced_accuracy") else ""
        label += {"sensitivity": f" ({names[1]})", "specificity": f" ({names[0]})"}.get(key, "")
        rows.append(f"| {label} | {_num(best.get(key))} | {ci} |")
    return rows


def model_card(
    config: dict[str, Any],
    run_config: dict[str, Any],
    title: str,
    license: str | None,
    weights: str = "model.safetensors",
) -> str:
    """README.md of an export: YAML front matter (Hugging Face), then the card's sections."""
    names = {v: k for k, v in config["store"]["classes"].items()}
    sections = (
        _front_matter(license),
        _introduction(config, title, names),
        _model_section(config, weights, names),
        _data_section(config, run_config),
        _split_section(config["training"]),
        _metrics_section(config, names),
        INTENDED_USE,
        _limitations(config),
        _how_to_use(title),
    )
    return "\n".join(line for section in sections for line in section)


# Each section is its lines, ending with a blank one.
def _front_matter(license: str | None) -> list[str]:
    """The YAML block the Hugging Face hub reads: library, license, tags, metrics."""
    tags = ("smri", "medical-imaging", "mri", "3d", "cnn-lstm", "binary-classification",
            "safetensors")  # fmt: skip
    return [
        "---",
        "library_name: smri",
        *([f"license: {license}"] if license else []),
        "tags:",
        *(f"- {t}" for t in tags),
        "metrics:",
        "- roc_auc",
        "- balanced_accuracy",
        "---",
        "",
    ]


def _introduction(config: dict[str, Any], title: str, names: dict[int, str]) -> list[str]:
    return [
        f"# {title}",
        "",
        f"A {config['model']['name'].upper()}-LSTM that gives the probability that a patient's "
        f"structural MRI is **{names[1]}** (class 1) rather than **{names[0]}** (class 0). Made "
        f"with smri {config['smri_version']} (`smri train`, then `smri export`).",
        "",
        "**Research use only; not for clinical use.**",
        "",
    ]


def _model_section(config: dict[str, Any], weights: str, names: dict[int, str]) -> list[str]:
    model, store, training = config["model"], config["store"], config["training"]
    m, s, h, w = store["volume_shape"]
    return [
        "## Model",
        "",
        f"- Architecture: a 3D CNN ({model['name']}, width {model['width']:g}"
        f"{_pooled(model.get('input_pool', 1))}) embeds each "
        f"modality volume with shared weights; an LSTM ({model['hidden']} units) reads the "
        f"sequence of modality embeddings; dropout {model['dropout']:g} and a linear layer give "
        "one logit.",
        f"- Input: {m} modalities in this order: {', '.join(store['modalities'])}; each "
        f"{s} slices x {h} x {w} (slice, y, x).",
        f"- Output: the probability of {names[1]}; predicted {names[1]} at 0.5 or above "
        "(not calibrated).",
        f"- Weights: `{weights}` (tensors only: loading it runs no code), from epoch "
        f"{training['epoch']} of {training['epochs'] or '?'}, the epoch with the best "
        "validation AUC.",
        "",
    ]


def _data_section(config: dict[str, Any], run_config: dict[str, Any]) -> list[str]:
    pre, s = config["preprocess"], config["store"]["volume_shape"][1]
    info = run_config.get("store", {})
    counts = ", ".join(f"{k} {v}" for k, v in (info.get("class_counts") or {}).items())
    return [
        "## Data",
        "",
        f"- Cohort: {_cohort(pre)}{info.get('n_patients', '?')} patients "
        f"({counts or 'counts not recorded'}), {len(info.get('skipped') or [])} left out "
        "during preprocessing.",
        f"- Preprocessing (`smri predict` repeats it on raw folders): each volume min-max "
        f"normalised over the whole volume, then its central {s} slices along the third axis; "
        + ("reoriented to RAS+ first; " if pre.get("canonical") else "no reorientation; ")
        + f"stored as {pre.get('dtype')}. Registration, skull stripping and resampling are "
        "not done by smri: inputs must come prepared as the training cohort's were.",
        "",
    ]


def _metrics_section(config: dict[str, Any], names: dict[int, str]) -> list[str]:
    training, metrics = config["training"], config["metrics"]
    return [
        "## Metrics",
        "",
        f"On the {training['n_val'] or '?'} validation patients, at the chosen epoch:",
        "",
        *_metrics_table(metrics["validation"] or {}, metrics["ci95"], names),
        "",
        *_cv_lines(metrics["cross_validation"]),
        "Intervals are those `smri train` recorded (one split: a bootstrap over the validation "
        "patients; cross-validation: across folds); 'not computed' where it recorded none. The "
        "validation patients also chose the epoch, so these numbers lean optimistic.",
        "",
    ]


INTENDED_USE = (
    "## Intended use",
    "",
    "Research on MRI classification methods and reproduction of smri's experiments. Not for "
    "clinical use: this is not a medical device, and it was not validated for diagnosis, "
    "grading, prognosis or treatment decisions about any patient.",
    "",
)


def _limitations(config: dict[str, Any]) -> list[str]:
    s = config["store"]["volume_shape"][1]
    return [
        "## Limitations",
        "",
        f"- Trained on {config['training']['n_train'] or '?'} patients of one cohort; how it "
        "does on other scanners, sites, protocols or populations is unknown.",
        f"- It sees only the central {s} slices of each volume, and only the modalities above.",
        "- A small validation set gives wide intervals; one split or fold is one estimate.",
        "- Labels come from the cohort's own annotation, with whatever errors it has.",
        "",
    ]


def _how_to_use(title: str) -> list[str]:
    return [
        "## How to use",
        "",
        "```",
        "pip install 'smri[export]'",
        f"smri predict {title}/ PATIENT_FOLDER...      # raw NIfTI folders",
        f"smri evaluate {title}/ STORE.h5             # a store made by smri preprocess",
        "```",
        "",
    ]


def _cohort(pre: dict[str, Any]) -> str:
    """Where the training data came from, as far as the run recorded it."""
    text = f"`{pre['input_name']}`, " if pre.get("input_name") else ""
    text += f"layout {pre['layout']}, " if pre.get("layout") else ""
    return text + (f"preprocessed into `{pre['store_name']}`: " if pre.get("store_name") else "")


def _split_section(training: dict[str, Any]) -> list[str]:
    return ["## Split", "", *_split_lines(training["split"], training), ""]


def _split_lines(split: dict[str, Any], training: dict[str, Any]) -> list[str]:
    sizes = f"{training['n_train'] or '?'} training and {training['n_val'] or '?'} validation"
    if split.get("folds"):
        return [
            f"Fold {split.get('fold')} of a {split['folds']}-fold cross-validation, stratified "
            f"by label, seed {split.get('seed')}: {sizes} patients. This is that fold's model "
            "alone; the other folds' models are not in this folder."
        ]
    return [
        f"One split, stratified by label, seed {split.get('seed')}, validation fraction "
        f"{split.get('val_fraction')}: {sizes} patients (the patient ids are in the run's "
        "split.json, not here)."
    ]


def _cv_lines(cv: dict[str, Any] | None) -> list[str]:
    if not cv or not cv.get("mean"):
        return []
    mean, std, ci95 = cv["mean"], cv.get("std") or {}, cv.get("ci95")
    parts = [
        f"{METRIC_LABELS[k]} {_num(mean.get(k))} ± {_num(std.get(k))} "
        f"(95% interval {_interval(ci95, k)})"
        for k in ("auc", "balanced_accuracy")
    ]
    return [f"Across the run's {cv.get('folds')} folds (mean ± std): " + "; ".join(parts) + ".", ""]


def _pooled(k: int) -> str:
    """How the card names the input pooling (nothing when off)."""
    return f", each slice first averaged over {k}x{k} voxels" if k > 1 else ""
