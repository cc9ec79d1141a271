"""Read a run folder back: which phases finished, their key numbers, and where the bundle and report are.

Works from the artifacts' completion records alone (no KFP API returns task outputs after a local run), so
it also reads a run that failed half-way or was resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from streetvision.contracts.metadata import METADATA_FILE
from streetvision.registry import PHASE_SPECS, PHASES

RUN_CONFIG = "config.yaml"
RUN_RECORD = "run.json"
PIPELINE_ROOT = "kfp"

# The numbers worth a glance in the summary table, per output kind.
HEADLINE = {
    "data_report": ("records", "placed", "quarantined"),
    "split": ("count", "class_counts"),
    # phase 4: did adaptation help? probes fitted on TRAIN, scored on VAL_SELECT, before -> after.
    "backbone": (
        "trainable_parameters",
        "ssl_loss_first",
        "ssl_loss_last",
        "knn_accuracy_before",
        "knn_accuracy_after",
        "linear_accuracy_before",
        "linear_accuracy_after",
        "linear_balanced_accuracy_before",
        "linear_balanced_accuracy_after",
        "val_select_majority_rate",
        "images_per_second",
    ),
    "checkpoint": (
        "best_epoch",
        "epochs_run",
        "val_select_mcc",
        "train_images_per_second",
        "device",
        "val_select_aurc_before",
        "val_select_aurc",
    ),
    "logits": ("accuracy", "mcc", "auroc"),
    "policy": (
        "policy",
        "feasible",
        "threshold",
        "calib_coverage",
        "answered_error_calib",
        "risk_bound",
        "calibrator",
        "temperature",
    ),
    "bundle": ("policy", "files", "bytes"),
    "evaluation": (
        "accuracy",
        "majority_rate",
        "balanced_accuracy",
        "mcc",
        "auroc",
        "ece",
        "coverage",
        "selective_accuracy",
        "answered_error",
        "deployment_score",
        "blessed",
    ),
}


@dataclass
class OutputRecord:
    phase: str
    name: str  # the output's name in the phase's registry entry
    path: Path
    meta: dict


@dataclass
class RunSummary:
    run_dir: Path
    phases: list[str]
    # (phase that wrote it, output name) -> its newest complete record.
    outputs: dict[tuple[str, str], OutputRecord] = field(default_factory=dict)

    def status(self, phase: str) -> str:
        done = all((phase, name) in self.outputs for name in PHASE_SPECS[phase].outputs)
        return "done" if done else "not finished"

    def reused(self, record: OutputRecord) -> bool:
        """True when the output came from an earlier attempt of this run (a resume reused it)."""
        attempts = sorted(p for p in (self.run_dir / PIPELINE_ROOT).iterdir() if p.is_dir() and p.name[0] != ".")
        return bool(attempts) and attempts[-1] not in record.path.parents

    def _record(self, kind: str) -> OutputRecord | None:
        """The first output of this kind, in phase order, from the run's phases (any phase when none are given)."""
        for spec in PHASES:
            if self.phases and spec.name not in self.phases:
                continue
            for name, output in spec.outputs.items():
                if output.kind == kind and (spec.name, name) in self.outputs:
                    return self.outputs[spec.name, name]
        return None

    @property
    def bundle(self) -> Path | None:
        record = self._record("bundle")
        return record.path if record else None

    @property
    def report(self) -> Path | None:
        record = self._record("evaluation")
        return record.path / "report.html" if record else None

    @property
    def policy_guarantee(self) -> str | None:
        record = self._record("policy")
        return record.meta["summary"].get("guarantee") if record else None

    @property
    def evaluation(self) -> dict | None:
        record = self._record("evaluation")
        return record.meta["summary"] if record else None

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(phase, done/reused/missing, output, headline numbers) for every expected output, in phase order."""
        rows = []
        for phase in self.phases:
            for name, output in PHASE_SPECS[phase].outputs.items():
                record = self.outputs.get((phase, name))
                label = f"{output.kind}[{output.split.value}]" if output.split else name
                if record is None:
                    rows.append((phase, "missing", label, ""))
                    continue
                values = {
                    **record.meta.get("summary", {}),
                    **{k: record.meta.get(k) for k in ("count", "class_counts")},
                }
                numbers = ", ".join(
                    f"{k}={_short(values[k])}" for k in HEADLINE.get(output.kind, ()) if values.get(k) is not None
                )
                rows.append((phase, "reused" if self.reused(record) else "done", label, numbers))
        return rows


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "/".join(str(v) for v in value.values())
    return str(value)


def output_name(meta: dict) -> str | None:
    """Which output of the phase that wrote it a completion record belongs to (None: not a registry output)."""
    spec = PHASE_SPECS.get(str(meta.get("phase")))
    for name, output in (spec.outputs if spec else {}).items():
        if output.kind == meta.get("kind") and (output.split is None or output.split.value == meta.get("split")):
            return name
    return None


def summarize_run(run_dir: str | Path, phases: list[str]) -> RunSummary:
    """Collect the newest complete record of each phase's outputs under the run's pipeline root."""
    run_dir = Path(run_dir)
    summary = RunSummary(run_dir, phases)
    for record_file in sorted((run_dir / PIPELINE_ROOT).rglob(METADATA_FILE)):
        try:
            meta = json.loads(record_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        name = output_name(meta)
        if name is None:
            continue
        key = (meta["phase"], name)
        current = summary.outputs.get(key)
        if current is None or meta.get("created_unix", 0) >= current.meta.get("created_unix", 0):
            summary.outputs[key] = OutputRecord(meta["phase"], name, record_file.parent, meta)
    return summary


def find_report(path: str | Path) -> Path:
    """The HTML report of a run folder, an evaluation artifact folder, or the report file itself."""
    path = Path(path)
    report: Path | None
    if path.is_file():
        report = path
    elif (path / PIPELINE_ROOT).is_dir():
        report = summarize_run(path, []).report
    else:
        report = path / "report.html"
    if report is not None and report.is_file():
        return report
    raise FileNotFoundError(
        f"no evaluation report in {path}: give a run folder whose evaluate phase finished (resume it with "
        f"`streetvision run --resume {path}` if it did not), an evaluation artifact folder, or a report.html"
    )
