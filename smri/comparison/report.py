"""summary.md: the comparison of `compare` in words and tables, for people to read.

The untouched test set comes first when there is one: it is the result. Validation numbers
follow, labelled as what they are (used to pick the best epoch and smri's defaults). "Significant"
is written only after a test that includes training variation: the two-level bootstrap on the
test set, the corrected resampled t-test over folds and seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smri.comparison.common import BASELINE

ALPHA = 0.05  # significance level of the sentences


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _p(p: float | None, c: dict[str, Any] | None = None) -> str:
    """A p-value for a table: at a bootstrap's floor, what was observed ('≤ 0.0010, 0 of 2000
    draws'); below 0.001 otherwise '< 0.001'."""
    if p is None:
        return "n/a"
    draws = (c or {}).get("draws")
    if draws and p <= 2 / (draws + 1) * (1 + 1e-9):
        beyond = (c or {}).get("draws_beyond_zero", 0)
        return f"≤ {2 / (draws + 1):.4f} ({beyond} of {draws} draws)"
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def _p_text(p: float | None, c: dict[str, Any] | None = None) -> str:
    """'p = 0.042', 'p < 0.001' or 'p ≤ 0.0010 (0 of 2000 draws)', for a sentence."""
    text = _p(p, c)
    return f"p {text}" if text[0] in "<≤" else f"p = {text}"


def _verdict(c: dict[str, Any], a: str, b: str, family: int) -> str:
    """One plain sentence on a paired difference b - a, judged after Holm's correction."""
    if c["difference"] is None:
        return f"- {_name(b)} vs {_name(a)}: not compared (see notes)."
    d, p, holm = c["difference"], c["p_value"], c.get("p_value_holm")
    better, worse = (b, a) if d > 0 else (a, b)
    interval = f"95 % CI of {_name(b)} − {_name(a)}: {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}"
    if holm is not None and holm < ALPHA:
        return (
            f"- {_name(better)} scores a higher AUC than {_name(worse)} by {abs(d):.3f} "
            f"({interval}, {_p_text(p, c)}, Holm over {family}: {_p(holm, c)}): "
            "**significant** at 0.05."
        )
    return (
        f"- {_name(b)} − {_name(a)}: AUC {d:+.3f} ({interval}, {_p_text(p, c)}, Holm over "
        f"{family}: {_p(holm, c)}): **not significant** at 0.05 — this does not tell the two "
        "apart."
    )


# summary.md's first line; an earlier smri wrote the second (`smri plot` replaces either)
SUMMARY_HEADINGS = ("# Results", "# Validation results")


def summary_markdown(summary: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """summary.md: the test set (when there is one), then validation with intervals, the
    comparisons, the baselines, in words."""
    lines = [SUMMARY_HEADINGS[0], ""]
    if summary.get("test"):
        lines += _test_lines(summary["test"])
    lines += _validation_lines(summary)
    lines += _comparison_lines(summary)
    lines += _baseline_lines(summary)
    if summary["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in summary["notes"])]
    if figures:
        lines += ["", *(f"![{name}]({name})" for name in figures)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- test set
def _test_lines(test: dict[str, Any]) -> list[str]:
    n, prevalence = test["patients"], test.get("prevalence")
    lines = [
        "## Test set (untouched)",
        "",
        f"{n} patients that no training, epoch choice or default choice saw"
        + (f" (share of class 1: {prevalence:.3f})." if prevalence is not None else "."),
        "Every trained model of a run (each fold and seed) scores them; AUC and balanced "
        "accuracy are the mean over those models, with a 95 % interval from a two-level "
        "bootstrap that resamples both the test patients and the trained models; the "
        "ensemble is their mean probability.",
        "",
        "| model | trained models | AUC [95 % CI] | balanced accuracy [95 % CI] | ensemble AUC "
        "| Brier | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in test["models"]:
        lines.append(
            f"| {m['model'].upper()} | {m['trainings']} | {_num(m['auc'])}{_ci(m['ci95']['auc'])} "
            f"| {_num(m['balanced_accuracy'])}{_ci(m['ci95']['balanced_accuracy'])} "
            f"| {_num(m['ensemble_auc'])} | {_num(m['brier'])} | {_num(m['ece'])} |"
        )
    base = test["baselines"].get(BASELINE)
    if base is not None:
        lines.append(
            f"| intensity baseline | {test['models'][0]['trainings'] if test['models'] else ''} "
            f"| {_num(base['auc'])}{_ci(base['ci95']['auc'])} | | | | |"
        )
    lines += [
        "",
        "Brier score and ECE (10 bins) of the calibrated probabilities (the class weighting of "
        "training undone), mean over the trained models; 0 is perfect.",
        "",
        f"### Comparisons on the test set ({test['method']})",
        "",
        "| a | b | AUC b − a | 95 % CI | p | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    comps = test["comparisons"]
    lines += [_comparison_row(c) for c in comps]
    family = len(test.get("holm_family") or [])
    lines += ["", f"Holm's correction over the {family} comparisons of this table.", ""]
    lines += [_verdict(c, c["a"], c["b"], family) for c in comps]
    return [*lines, ""]


def _name(model: str) -> str:
    """A model as the tables name it: CNN2, or "intensity baseline"."""
    return "intensity baseline" if model == BASELINE else model.upper()


def _comparison_row(c: dict[str, Any]) -> str:
    ci = "n/a" if c["ci95"] is None else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
    diff = "n/a" if c["difference"] is None else f"{c['difference']:+.3f}"
    a, b = c.get("a") or c.get("baseline"), c.get("b") or c.get("model")
    return (
        f"| {_name(a)} | {_name(b)} | {diff} | {ci} | {_p(c['p_value'], c)} "
        f"| {_p(c.get('p_value_holm'), c)} |"
    )


# -------------------------------------------------------------------------------- validation
def _validation_lines(summary: dict[str, Any]) -> list[str]:
    models = summary["models"]
    header = ["model", "parameters", "folds × seeds", "AUC [95 % CI]",
              "balanced accuracy [95 % CI]", "accuracy", "sensitivity", "specificity",
              "epoch s", "train patients/s", "device"]  # fmt: skip
    lines = [
        "## Validation (used for selection)",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for m in models:
        pm = "" if m.get("trainings", m["folds"]) == 1 else " ± "

        def cell(k: str, m: dict[str, Any] = m, pm: str = pm) -> str:
            v = _num(m["mean"][k])
            return v + (f"{pm}{_num(m['std'][k])}" if pm and m["std"][k] is not None else "")

        row = [
            m["model"].upper(),
            f"{m['parameters']:,}",
            f"{m['folds']} × {m.get('seeds', 1)}",
            cell("auc") + _ci(m["ci95"]["auc"]) + _clipped(m, "auc"),
            cell("balanced_accuracy") + _ci(m["ci95"]["balanced_accuracy"])
            + _clipped(m, "balanced_accuracy"),
            cell("accuracy"),
            cell("sensitivity"),
            cell("specificity"),
            _num(m["epoch_seconds"], ".1f"),
            _num(m["train_patients_per_s"], ".1f"),
            str(m["device"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    k = models[0]["folds"] if models else 1
    lines += [
        "",
        (
            f"Each metric is the mean over the trainings (folds × seeds) of the best epoch's "
            f"value on that training's validation patients (AUC: the mean of per-fold AUCs, "
            f"not the AUC of pooled predictions); ± is the sample standard deviation (ddof 1). "
            f"95 % CI: Student's t over the {k} folds (each fold's mean over seeds), "
            "clipped to [0, 1] where marked †."
            if k > 1
            else "Best epoch by validation AUC; 95 % CI: patient bootstrap of the validation "
            f"predictions ({summary['bootstrap']['draws']} draws, stratified by class)."
        ),
        "These patients chose the best epoch of every training and smri's defaults: the "
        "numbers are optimistic; the test set above is what no choice saw. Patients/s is the "
        "mean training throughput.",
    ]
    return lines


def _clipped(m: dict[str, Any], metric: str) -> str:
    raw = (m.get("ci95_clipped") or {}).get(metric)
    return "" if raw is None else f" † (unclipped [{raw[0]:.3f}, {raw[1]:.3f}])"


def _comparison_lines(summary: dict[str, Any]) -> list[str]:
    comps = summary["comparisons"]
    if not comps:
        return []
    family = len(summary.get("holm_family") or [])
    methods = sorted({c["method"] for c in comps if c.get("method")})
    lines = [
        "",
        "## Pairwise comparisons on validation (AUC)",
        "",
        "| a | b | AUC b − a | 95 % CI | p | p (Holm) |",
        "|---|---|---|---|---|---|",
        *[_comparison_row(c) for c in comps],
        "",
        "Method: " + ("; ".join(methods) or "n/a") + ". The corrected resampled t-test "
        "(Nadeau and Bengio) compares the two models' AUCs training by training and widens "
        "the variance for the patients the trainings share, so it includes how much a "
        f"model varies from one training to the next. Holm's correction over {family} "
        "comparisons: these pairs and each model against the intensity baseline.",
        "",
    ]
    lines += [_verdict(c, c["a"], c["b"], family) for c in comps]
    n_sig = sum(1 for c in comps if c["p_value_holm"] is not None and c["p_value_holm"] < ALPHA)
    lines.append(
        f"- After Holm's correction, {n_sig} of the {len(comps)} pairs stay significant at 0.05."
    )
    return lines


def _baseline_lines(summary: dict[str, Any]) -> list[str]:
    b = summary["baselines"]
    lines = ["", "## Baselines on validation", ""]
    acc = b["majority"]["accuracy"]
    if acc is not None:
        lines.append(
            f"- Majority class: always predicting the larger class scores accuracy "
            f"{acc:.3f} on these validation patients (AUC 0.5, balanced accuracy "
            "0.5) — compare accuracy with it; prefer balanced accuracy and AUC."
        )
    else:
        per = ", ".join(
            f"{m['model'].upper()} {_num(m['majority_baseline_accuracy'])}"
            for m in summary["models"]
        )
        lines.append(f"- Majority class: accuracy {per} (each run's own validation patients).")
    lr = b[BASELINE]
    if lr is None:
        lines.append("- Intensity baseline: not computed (see notes).")
        return lines
    lines.append(
        f"- Intensity baseline (logistic regression on per-modality mean, std, max and "
        f"percentiles of each slab, fitted on each training's own training patients): AUC "
        f"{_num(lr['auc'])}{_ci(lr['ci95']['auc'])}, balanced accuracy "
        f"{_num(lr['balanced_accuracy'])}{_ci(lr['ci95']['balanced_accuracy'])}."
    )
    for v in summary["versus_baseline"]:
        name = v["model"].upper()
        holm = v.get("p_value_holm")
        if v["difference"] is None:
            lines.append(f"- {name} vs the intensity baseline: not compared.")
        elif holm is not None and holm < ALPHA and v["difference"] > 0:
            lines.append(
                f"- {name} beats the intensity baseline: AUC {v['difference']:+.3f} "
                f"(95 % CI {v['ci95'][0]:+.3f} to {v['ci95'][1]:+.3f}, "
                f"{_p_text(v['p_value'], v)}, Holm {_p(holm, v)})."
            )
        else:
            lines.append(
                f"- **{name} does not beat the intensity baseline**: AUC "
                f"{v['difference']:+.3f} (95 % CI {v['ci95'][0]:+.3f} to "
                f"{v['ci95'][1]:+.3f}, {_p_text(v['p_value'], v)}); it has not shown that "
                "it uses more than global intensity statistics."
            )
    return lines
