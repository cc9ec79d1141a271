"""The evaluation report: one self-contained HTML file (inline PNG plots, no network), readable in the KFP UI."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written inside pipeline tasks
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _reliability(confidence, correct, bins):
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    centers, accs, counts = [], [], []
    for b in range(bins):
        mask = index == b
        if mask.any():
            centers.append(confidence[mask].mean())
            accs.append(correct[mask].mean())
            counts.append(int(mask.sum()))
    ax.plot([0.5, 1], [0.5, 1], "--", color="grey", label="perfect calibration")
    ax.scatter(
        centers, accs, s=[12 + 4 * np.sqrt(c) for c in counts], color="#1f77b4", zorder=3, label="bins (size ~ count)"
    )
    ax.plot(centers, accs, color="#1f77b4")
    ax.set(
        xlim=(0.45, 1.01),
        ylim=(0.0, 1.02),
        xlabel="confidence (calibrated)",
        ylabel="accuracy",
        title="Reliability diagram",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _risk_coverage(coverage, risk, metrics, policy):
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(coverage, risk, color="#d62728", label="selective risk")
    ax.axhline(policy["target_risk"], ls="--", color="grey", label=f"target risk {policy['target_risk']:.2f}")
    if metrics["coverage"] > 0:
        ax.scatter(
            [metrics["coverage"]],
            [1 - metrics["selective_accuracy"]],
            color="black",
            zorder=3,
            label=f"policy: coverage {metrics['coverage']:.2f}",
        )
    ax.set(
        xlim=(0, 1.01),
        ylim=(0, max(0.05, float(risk.max()) * 1.1)),
        xlabel="coverage",
        ylabel="error among accepted",
        title=f"Risk-coverage (AURC {metrics['aurc']:.3f})",
    )
    ax.legend(fontsize=8)
    return _png(fig)


def _confusion(matrix, label_names):
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > matrix.max() / 2 else "black",
            fontsize=12,
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=label_names,
        yticklabels=label_names,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (all samples)",
    )
    return _png(fig)


def _roc(fpr, tpr, auroc):
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(fpr, tpr, color="#2ca02c", label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (roadwork recall)", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _challenge(challenge):
    """Accuracy and MCC per challenge level, with their bootstrap intervals as error bars."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    levels = [entry["level"] for entry in challenge]
    for offset, (name, color) in enumerate((("accuracy", "#1f77b4"), ("mcc", "#ff7f0e"))):
        values = np.array([entry["metrics"][name] for entry in challenge])
        bounds = np.array([entry["intervals"][name] for entry in challenge], dtype=float)
        errors = np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))
        ax.errorbar(
            np.array(levels) + 0.08 * (offset - 0.5),
            values,
            yerr=np.nan_to_num(errors),
            fmt="o-",
            color=color,
            capsize=3,
            label=name,
        )
    ax.set(
        xticks=levels,
        xlabel="challenge level (224 px JPEG)",
        ylim=(min(0.0, ax.get_ylim()[0]), 1.02),
        title="Deployment-style challenge",
    )
    ax.legend(fontsize=8)
    return _png(fig)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.4f}"
    return html.escape(str(value))


def _interval(bounds) -> str:
    low, high = bounds
    return "n/a" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.4f}, {high:.4f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# Metrics shown in the per-level and per-slice tables.
_COMPACT = ("accuracy", "mcc", "auroc", "ece", "coverage", "deployment_score")


def _compact_rows(entries: list[dict], key: str) -> list[list[str]]:
    return [
        [html.escape(str(e[key])), str(e["metrics"]["n"])]
        + [f"{_fmt(e['metrics'][m])} {_interval(e['intervals'][m])}" for m in _COMPACT]
        for e in entries
    ]


def _answer_rows(results: dict) -> list[list[str]]:
    """One row per input distribution: what was answered and how often wrongly, beside the guarantee's quantity."""
    entries = [("VAL_TEST (as cached)", results["answers"])]
    entries += [(f"challenge level {e['level']}", e["answers"]) for e in results["challenge"]]
    entries += [(row["name"], row["answers"]) for row in results.get("answer_mixes", [])]
    return [
        [
            html.escape(name),
            str(a["images"]),
            str(a["answered"]),
            _fmt(a["coverage"]),
            _fmt(a["answered_error"]),
            _fmt(a["guarantee_value"]),
            html.escape(
                a.get("promise") or ("none (infeasible policy)" if a["promised"] is None else f"<= {a['promised']}")
            ),
        ]
        for name, a in entries
    ]


def write_html_report(
    path, *, results, confidence, correct, matrix, roc, risk_coverage, policy, label_names, ece_bins
) -> None:
    metrics, intervals = results["metrics"], results["intervals"]
    level = f"{results['confidence_level']:.0%}"
    verdict = (
        f"Accuracy {metrics['accuracy']:.3f} is "
        f"{'above' if metrics['accuracy'] > metrics['majority_rate'] else 'NOT above'} "
        f"the majority-class rate {metrics['majority_rate']:.3f} of VAL_TEST."
    )
    blessing = results["blessing"]
    checks = (
        "".join(
            f"<li>{html.escape(c['rule'])}: {_fmt(c['value'])} — {'pass' if c['passed'] else '<b>FAIL</b>'}</li>"
            for c in blessing["checks"]
        )
        or "<li>no rule configured</li>"
    )
    plots = [
        _reliability(np.asarray(confidence), np.asarray(correct, dtype=float), ece_bins),
        _risk_coverage(risk_coverage[0], risk_coverage[1], metrics, policy),
        _confusion(np.asarray(matrix), label_names),
        _roc(roc[0], roc[1], metrics["auroc"]),
    ]
    if results["challenge"]:
        plots.append(_challenge(results["challenge"]))
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
    metric_rows = [
        [html.escape(k), _fmt(v), _interval(intervals[k]) if k in intervals else ""] for k, v in metrics.items()
    ]
    target_rows = [
        [html.escape(t["label"]), html.escape(t["target"]), _fmt(t["value"]), "met" if t["met"] else "<b>not met</b>"]
        for t in results["seed_targets"]
    ]
    compact_header = [f"{m} [{level} CI]" for m in _COMPACT]
    sections = [
        f"<h2>Metrics ({metrics['n']} VAL_TEST images, calibrated probabilities, decision at 0.5)</h2>",
        _table(["metric", "value", f"{level} bootstrap interval"], metric_rows),
        "<h2>Answers beside the guarantee</h2>",
        _table(
            [
                "images",
                "n",
                "answered",
                "coverage",
                "error among answered",
                html.escape(results["answers"]["guarantee_quantity"]),
                "promised",
            ],
            _answer_rows(results),
        ),
        "<h2>Against the seed's targets</h2>",
        _table(["metric", "target", "measured", "verdict"], target_rows),
    ]
    if results["challenge"]:
        sections += [
            "<h2>Challenge levels (VAL_TEST re-rendered as deployment sends it)</h2>",
            _table(["level", "n"] + compact_header, _compact_rows(results["challenge"], "level")),
            "<ul>"
            + "".join(f"<li>level {e['level']}: {html.escape(e['description'])}</li>" for e in results["challenge"])
            + "</ul>",
        ]
    if results["slices"]:
        sections += [
            "<h2>Slices</h2>",
            _table(["slice", "n"] + compact_header, _compact_rows(results["slices"], "slice")),
        ]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>StreetVision Stage 1 evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 12px; }} td, th {{ border-bottom: 1px solid #ddd; padding: 3px 12px; }}
th {{ text-align: left; }} .plots img {{ margin: 6px; border: 1px solid #eee; }}
.note {{ background: #f6f6f6; padding: 8px 12px; }} .pass {{ background: #e7f6e7; }} .fail {{ background: #fbe9e9; }}
</style></head><body>
<h1>StreetVision Stage 1 — VAL_TEST evaluation</h1>
<p class="note">{html.escape(verdict)}</p>
<div class="note {"pass" if blessing["passed"] else "fail"}"><b>Blessing: {"PASSED" if blessing["passed"] else "FAILED"}</b>
(judged on the {"point estimates" if blessing["judge"] == "point" else "cautious end of each interval"})<ul>{checks}</ul></div>
<p class="note"><b>Policy guarantee.</b> {html.escape(policy["guarantee"])}</p>
<div class="plots">{images}</div>
{"".join(sections)}
</body></html>
"""
    Path(path).write_text(page)
