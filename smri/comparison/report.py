"""summary.md: the comparison of `compare` in words and tables, for people to read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smri.comparison.compare import BASELINE

ALPHA = 0.05  # significance level of the sentences


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def _p_text(p: float | None) -> str:
    """'p = 0.042' or 'p < 0.001', for a sentence."""
    text = _p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _verdict(c: dict[str, Any], a: str, b: str) -> str:
    """One plain sentence on a paired difference b - a."""
    if c["difference"] is None:
        return f"- {b.upper()} vs {a.upper()}: not compared (see notes)."
    d, p = c["difference"], c["p_value"]
    better, worse = (b, a) if d > 0 else (a, b)
    if p is not None and p < ALPHA:
        return (
            f"- {better.upper()} scores a higher AUC than {worse.upper()} by {abs(d):.3f} "
            f"(95 % CI of {b.upper()} − {a.upper()}: {c['ci95'][0]:+.3f} to "
            f"{c['ci95'][1]:+.3f}, {_p_text(p)}): **significant** at 0.05."
        )
    return (
        f"- {b.upper()} − {a.upper()}: AUC {d:+.3f} (95 % CI {c['ci95'][0]:+.3f} to "
        f"{c['ci95'][1]:+.3f}, {_p_text(p)}): **not significant** at 0.05 — these "
        "patients do not tell the two apart."
    )


SUMMARY_HEADING = "# Validation results"  # summary.md's first line


def summary_markdown(summary: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """summary.md: the models with intervals, the paired comparisons, the baselines, in words."""
    models = summary["models"]
    header = [
        "model",
        "parameters",
        "folds",
        "AUC [95 % CI]",
        "balanced accuracy [95 % CI]",
        "accuracy",
        "sensitivity",
        "specificity",
        "epoch s",
        "train patients/s",
        "device",
    ]
    lines = [
        SUMMARY_HEADING,
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for m in models:
        pm = "" if m["folds"] == 1 else " ± "

        def cell(k: str, m: dict[str, Any] = m, pm: str = pm) -> str:
            v = _num(m["mean"][k])
            return v + (f"{pm}{_num(m['std'][k])}" if pm and m["std"][k] is not None else "")

        row = [
            m["model"].upper(),
            f"{m['parameters']:,}",
            str(m["folds"]),
            cell("auc") + _ci(m["ci95"]["auc"]),
            cell("balanced_accuracy") + _ci(m["ci95"]["balanced_accuracy"]),
            cell("accuracy"),
            cell("sensitivity"),
            cell("specificity"),
            _num(m["epoch_seconds"], ".1f"),
            _num(m["train_patients_per_s"], ".1f"),
            str(m["device"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    k = models[0]["folds"] if models else 1
    lines += [
        "",
        (
            f"Mean ± std over {k} folds of the best epoch (by validation AUC); 95 % CI: "
            f"Student's t over the {k} fold values."
            if k > 1
            else "Best epoch by validation AUC; 95 % CI: patient bootstrap of the validation "
            f"predictions ({summary['bootstrap']['draws']} draws, stratified by class)."
        ),
        "Patients/s is the mean training throughput.",
    ]
    lines += _comparison_lines(summary)
    lines += _baseline_lines(summary)
    if summary["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in summary["notes"])]
    if figures:
        lines += ["", *(f"![{name}]({name})" for name in figures)]
    return "\n".join(lines) + "\n"


def _comparison_lines(summary: dict[str, Any]) -> list[str]:
    comps = summary["comparisons"]
    if not comps:
        return []
    draws = summary["bootstrap"]["draws"]
    lines = [
        "",
        "## Pairwise comparisons (AUC, same patients)",
        "",
        "| a | b | AUC b − a | 95 % CI | p | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for c in comps:
        ci = "n/a" if c["ci95"] is None else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        diff = "n/a" if c["difference"] is None else f"{c['difference']:+.3f}"
        lines.append(
            f"| {c['a'].upper()} | {c['b'].upper()} | {diff} | {ci} | "
            f"{_p(c['p_value'])} | {_p(c['p_value_holm'])} |"
        )
    lines += [
        "",
        f"Paired patient bootstrap ({draws} draws, stratified by fold and class): both "
        "models are scored on the same resampled patients; two-sided p. The fold-level "
        "intervals above also hold the training runs' own variation, so they are wider.",
        "",
    ]
    lines += [_verdict(c, c["a"], c["b"]) for c in comps]
    n_sig = sum(1 for c in comps if c["p_value_holm"] is not None and c["p_value_holm"] < ALPHA)
    lines.append(
        f"- With Holm's correction for the {len(comps)} comparisons, {n_sig} stay "
        "significant at 0.05."
    )
    return lines


def _baseline_lines(summary: dict[str, Any]) -> list[str]:
    b = summary["baselines"]
    lines = ["", "## Baselines", ""]
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
        f"percentiles of each slab, fitted on each fold's training patients): AUC "
        f"{_num(lr['auc'])}{_ci(lr['ci95']['auc'])}, balanced accuracy "
        f"{_num(lr['balanced_accuracy'])}{_ci(lr['ci95']['balanced_accuracy'])}."
    )
    for v in summary["versus_baseline"]:
        name = v["model"].upper()
        if v["difference"] is None:
            lines.append(f"- {name} vs the intensity baseline: not compared.")
        elif v["p_value"] is not None and v["p_value"] < ALPHA and v["difference"] > 0:
            lines.append(
                f"- {name} beats the intensity baseline: AUC {v['difference']:+.3f} "
                f"(95 % CI {v['ci95'][0]:+.3f} to {v['ci95'][1]:+.3f}, "
                f"{_p_text(v['p_value'])})."
            )
        else:
            lines.append(
                f"- **{name} does not beat the intensity baseline**: AUC "
                f"{v['difference']:+.3f} (95 % CI {v['ci95'][0]:+.3f} to "
                f"{v['ci95'][1]:+.3f}, {_p_text(v['p_value'])}); it has not shown that "
                "it uses more than global intensity statistics."
            )
    return lines
