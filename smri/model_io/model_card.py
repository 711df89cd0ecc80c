"""The README.md model card of an exported model: Hugging Face front matter, then sections.

A function of the export's config.json and the run's config.json: it computes nothing, and
prints an interval only where `smri train` recorded one. The front matter carries the Hub's
``model-index`` (task, dataset, metrics with values: the validation metrics, and the untouched
test set's when the run was scored on one), and ``datasets`` when the export names a Hub
dataset.
"""

from __future__ import annotations

import json
import math
from typing import Any

from smri.model_io.metadata import finite

METRIC_LABELS = {"auc": "AUC", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy",
                 "sensitivity": "sensitivity", "specificity": "specificity"}  # fmt: skip
# smri's metric -> the Hub's metric type (the `evaluate` library's names where there is one)
HUB_METRICS = {"auc": "roc_auc", "balanced_accuracy": "balanced_accuracy", "accuracy": "accuracy",
               "sensitivity": "recall", "specificity": "specificity"}  # fmt: skip
TASK = "image-classification"


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
        _front_matter(config, title, license, names),
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
def _front_matter(
    config: dict[str, Any], title: str, license: str | None, names: dict[int, str]
) -> list[str]:
    """The YAML block the Hugging Face hub reads: library, license, tags, datasets, metrics
    and the model-index of results (strings JSON-quoted, which YAML reads as they are)."""
    tags = ("smri", "medical-imaging", "mri", "3d", "cnn-lstm", "binary-classification",
            "safetensors")  # fmt: skip
    dataset = config.get("dataset")
    return [
        "---",
        "library_name: smri",
        *([f"license: {license}"] if license else []),
        "tags:",
        *(f"- {t}" for t in tags),
        *(["datasets:", f"- {json.dumps(dataset)}"] if dataset else []),
        "metrics:",
        "- roc_auc",
        "- balanced_accuracy",
        *_model_index(config, title, names),
        "---",
        "",
    ]


def _model_index(config: dict[str, Any], title: str, names: dict[int, str]) -> list[str]:
    """The Hub's ``model-index``: one result per split (validation; test when scored), each
    metric named so that this model's numbers and a mean over the run's trainings differ."""
    pre, metrics = config["preprocess"], config["metrics"]
    cohort = config.get("dataset") or pre.get("input_name") or pre.get("store_name") or "cohort"
    results = [("validation", cohort, _validation_metrics(metrics))]
    test = metrics.get("test")
    if test:
        results.append(("test", test.get("store_name") or cohort, _test_metrics(test)))
    lines = ["model-index:", f"- name: {json.dumps(title)}", "  results:"]
    task = f"MRI classification: {names[1]} (1) vs {names[0]} (0)"
    for split, name, rows in results:
        rows = [(key, value, label) for key, value, label in rows if finite(value)]
        if not rows:
            continue
        lines += [
            "  - task:",
            f"      type: {TASK}",
            f"      name: {json.dumps(task)}",
            "    dataset:",
            f"      type: {json.dumps(config.get('dataset') or name)}",
            f"      name: {json.dumps(name)}",
            f"      split: {split}",
            "    metrics:",
        ]
        for key, value, label in rows:
            lines += [
                f"    - type: {HUB_METRICS[key]}",
                f"      value: {round(float(value), 4)}",
                f"      name: {json.dumps(label)}",
                "      verified: false",
            ]
    return lines if lines[-1] != "  results:" else []


def _validation_metrics(metrics: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(metric, value, Hub name) of the validation results: this model's, then the mean over
    the run's folds when it is one fold."""
    best = metrics.get("validation") or {}
    chose = "this model; the validation patients also chose its epoch"
    rows = [(k, best.get(k), f"validation {label} ({chose})") for k, label in METRIC_LABELS.items()]
    cv = metrics.get("cross_validation") or {}
    for k in ("auc", "balanced_accuracy"):
        value = (cv.get("mean") or {}).get(k)
        rows.append((k, value, f"validation {METRIC_LABELS[k]} (mean of the run's "
                               f"{cv.get('folds')} folds)"))  # fmt: skip
    return rows


def _test_metrics(test: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(metric, value, Hub name) on the untouched test patients: this model's own, the mean
    over the run's trainings, the ensemble's AUC."""
    own, mean, k = test.get("model") or {}, test.get("mean") or {}, test.get("trainings")
    rows = [(m, own.get(m), f"test {label} (this model)") for m, label in METRIC_LABELS.items()]
    if k and k > 1:
        for m in ("auc", "balanced_accuracy"):
            label = f"test {METRIC_LABELS[m]} (mean of the run's {k} trainings)"
            rows.append((m, mean.get(m), label))
        label = f"test AUC (ensemble: the mean probability of the run's {k} trainings)"
        rows.append(("auc", test.get("ensemble_auc"), label))
    return rows


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
        f"- Input: a float32 tensor (batch, modality, slice, y, x) with values in [0, 1]: "
        f"{m} modalities in this order: {', '.join(store['modalities'])}; each {s} slices x "
        f"{h} x {w}. `network_data_format` in config.json says it for programs (as MONAI "
        "bundles' metadata.json does): value range, channel and axis order, slab, spacing.",
        *_output_lines(config.get("calibration"), names),
        f"- Weights: `{weights}` (tensors only: loading it runs no code), from epoch "
        f"{training['epoch']} of {training['epochs'] or '?'}, the epoch with the best "
        "validation AUC.",
        "",
    ]


def _output_lines(calibration: dict[str, Any] | None, names: dict[int, str]) -> list[str]:
    """What the output means: one logit; the calibrated probability and the threshold."""
    if not calibration:
        return [
            f"- Output: one logit; its sigmoid is the probability of {names[1]}, predicted at "
            "0.5 or above (not calibrated: a model from before smri calibrated)."
        ]
    offset, threshold = calibration["logit_offset"], calibration["threshold"]
    undone = (
        f"the class weighting of training undone: `sigmoid(logit + {offset:.4f})`, the "
        "offset being config.json's `calibration.logit_offset`"
        if offset
        else "offset 0: training weighted both classes alike, so the logit's sigmoid itself"
    )
    return [
        f"- Output: one logit per patient. The probability `smri predict` and `smri evaluate` "
        f"report is calibrated ({undone}): among patients like the training cohort, about "
        f"that share are {names[1]}.",
        f"- Decision: {names[1]} at and above a probability of {threshold:.3f} (config.json's "
        "`calibration.threshold`)"
        + (
            f", the share of {names[1]} among the training patients: the balanced rule the "
            "class weighting aims at, not 0.5."
            if offset
            else "."
        ),
    ]


def _data_section(config: dict[str, Any], run_config: dict[str, Any]) -> list[str]:
    pre, s = config["preprocess"], config["store"]["volume_shape"][1]
    info = run_config.get("store", {})
    counts = ", ".join(f"{k} {v}" for k, v in (info.get("class_counts") or {}).items())
    dataset = config.get("dataset")
    hub = [f"- Dataset: [{dataset}](https://huggingface.co/datasets/{dataset})"] if dataset else []
    return [
        "## Data",
        "",
        *hub,
        f"- Cohort: {_cohort(pre)}{info.get('n_patients', '?')} patients "
        f"({counts or 'counts not recorded'}), {len(info.get('skipped') or [])} left out "
        "during preprocessing.",
        f"- Preprocessing (`smri predict` repeats it on raw folders): each volume min-max "
        f"normalised over the whole volume, then its central {s} slices along the third axis; "
        + ("reoriented to RAS+ first; " if pre.get("canonical") else "no reorientation; ")
        + f"stored as {pre.get('dtype')}. Registration, skull stripping and resampling are "
        "not done by smri: inputs must come prepared as the training cohort's were"
        + _spacing_text(config.get("network_data_format"))
        + ".",
        "",
    ]


def _spacing_text(data_format: dict[str, Any] | None) -> str:
    spacing = ((data_format or {}).get("inputs", {}).get("image", {})).get("spacing")
    if not spacing:
        return ""
    mm = " x ".join(f"{v:g}" for v in spacing["median"])
    return f" (their median voxel spacing: {mm} mm, slice x y x x)"


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
        *_test_lines(metrics.get("test")),
    ]


def _test_lines(test: dict[str, Any] | None) -> list[str]:
    """The untouched test set: this model's metrics and the run's mean, when it was scored."""
    if not test:
        return []
    own, mean, k = test.get("model") or {}, test["mean"], test["trainings"]
    where = f" of `{test['store_name']}`" if test.get("store_name") else ""
    several = k > 1
    rows = ["| metric | this model |" + (f" mean of the run's {k} trainings |" if several else ""),
            "|---|---|" + ("---|" if several else "")]  # fmt: skip
    for key, label in METRIC_LABELS.items():
        cell = f" {_num(mean.get(key))} |" if several else ""
        rows.append(f"| {label} | {_num(own.get(key))} |{cell}")
    ensemble = (
        f" The ensemble of the {k} trainings (their mean probability) has AUC "
        f"{_num(test.get('ensemble_auc'))}."
        if several
        else ""
    )
    return [
        f"On the {test['n']} untouched test patients{where}, which no training of the run saw "
        f"(`smri evaluate RUN TEST_STORE --out RUN/{test['folder']}`):",
        "",
        *rows,
        "",
        "These, not the validation numbers, estimate how the model does on new patients like "
        "the cohort's." + ensemble,
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
        "In Python, on a batch `images` of a store's patients (batch, modality, slice, y, x):",
        "",
        "```python",
        "import json, torch, smri",
        f'model = smri.load_model("{title}")',
        f'calibration = json.load(open("{title}/config.json"))["calibration"]',
        'p = torch.sigmoid(model(images) + calibration["logit_offset"])  # calibrated',
        'predicted = p >= calibration["threshold"]',
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
