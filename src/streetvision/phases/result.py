"""Typed phase I/O: where a phase reads and writes (`PhasePaths`) and what it hands back (`PhaseResult`).

Every `run_*` phase function has the same shape, `run_x(cfg: Config, paths: PhasePaths) -> PhaseResult`, so one
generic adapter (components/adapter.py) turns any phase into a KFP component body.

One generic pair rather than a dataclass per phase, because the names of a phase's inputs, outputs and reports
are already declared once, in the phase registry (`PhaseSpec.inputs`, `.outputs`, `.reports`): both objects
are checked against that declaration when they are built, so a misnamed, missing or extra name fails at the
call, with the phase's real names in the message, before anything is read or written. Per-phase dataclasses
would give attribute access but declare every name a second time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from streetvision.contracts.errors import ContractError
from streetvision.registry import PHASE_SPECS, PhaseSpec

# What a component may return as KFP output parameters.
Parameter = bool | int | float | str


def _spec(phase: str, what: str) -> PhaseSpec:
    if phase not in PHASE_SPECS:
        raise ContractError(
            f"unknown phase {phase!r}", what, f"use one of the registry's phases: {', '.join(PHASE_SPECS)}"
        )
    return PHASE_SPECS[phase]


def _check_names(phase: str, what: str, given: set[str], allowed: set[str], required: set[str]) -> None:
    problems = []
    if unknown := sorted(given - allowed):
        problems.append(f"unknown {', '.join(unknown)}")
    if missing := sorted(required - given):
        problems.append(f"missing {', '.join(missing)}")
    if problems:
        raise ContractError(
            f"{'; '.join(problems)}",
            f"{phase} {what}",
            f"give exactly the {what} the phase registry declares for {phase}: {', '.join(sorted(allowed)) or 'none'}",
        )


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class PhasePaths:
    """The folders a phase reads (`inputs`) and writes (`outputs`), by the names its registry entry declares.

    All declared outputs are required; all inputs too, except those only a variant reads
    (`PhaseSpec.optional_inputs`, e.g. phase 1's `backbone`)."""

    phase: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]

    def __post_init__(self) -> None:
        spec = _spec(self.phase, "PhasePaths")
        object.__setattr__(self, "inputs", _frozen({k: str(v) for k, v in self.inputs.items()}))
        object.__setattr__(self, "outputs", _frozen({k: str(v) for k, v in self.outputs.items()}))
        _check_names(self.phase, "inputs", set(self.inputs), set(spec.inputs), set(spec.inputs) - spec.optional_inputs)
        _check_names(self.phase, "outputs", set(self.outputs), set(spec.outputs), set(spec.outputs))

    @classmethod
    def of(cls, phase: str, **paths: str | os.PathLike[str]) -> PhasePaths:
        """Inputs and outputs as keyword arguments, told apart by the registry (no name is both)."""
        spec = _spec(phase, "PhasePaths")
        _check_names(phase, "inputs and outputs", set(paths), set(spec.inputs) | set(spec.outputs), set())
        return cls(
            phase,
            {k: str(v) for k, v in paths.items() if k in spec.inputs},
            {k: str(v) for k, v in paths.items() if k in spec.outputs},
        )

    def input(self, name: str) -> Path:
        return Path(self.inputs[name])

    def optional_input(self, name: str) -> Path | None:
        """An input only a variant reads, or None when this run does not have it."""
        return Path(self.inputs[name]) if name in self.inputs else None

    def output(self, name: str) -> Path:
        return Path(self.outputs[name])


@dataclass(frozen=True)
class ClassificationCurves:
    """What a KFP ClassificationMetrics artifact shows: the confusion matrix and the ROC curve."""

    label_names: list[str]
    confusion_matrix: list[list[int]]
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]


@dataclass(frozen=True)
class PhaseResult:
    """What a phase hands back once every output is complete.

    - `outputs`: the completion record (metadata) of each declared output, by output name;
    - `metrics`: scalars for the component's Metrics output (finite floats);
    - `reports`: one HTML document per declared report name (`PhaseSpec.reports`);
    - `classification`: confusion matrix and ROC for a ClassificationMetrics output (evaluate only);
    - `parameters`: values the component returns as KFP output parameters (evaluate's `blessed`).
    """

    phase: str
    outputs: Mapping[str, dict]
    metrics: Mapping[str, float] = field(default_factory=dict)
    reports: Mapping[str, str] = field(default_factory=dict)
    classification: ClassificationCurves | None = None
    parameters: Mapping[str, Parameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = _spec(self.phase, "PhaseResult")
        _check_names(self.phase, "outputs", set(self.outputs), set(spec.outputs), set(spec.outputs))
        _check_names(self.phase, "reports", set(self.reports), set(spec.reports), set(spec.reports))
        bad = [k for k, v in self.metrics.items() if isinstance(v, bool) or not math.isfinite(float(v))]
        if bad:
            raise ContractError(
                f"metrics {', '.join(bad)} are not finite numbers",
                f"{self.phase} result",
                "leave undefined metrics out of PhaseResult.metrics (KFP logs finite floats only)",
            )
        object.__setattr__(self, "outputs", _frozen(self.outputs))
        object.__setattr__(self, "metrics", _frozen({k: float(v) for k, v in self.metrics.items()}))
        object.__setattr__(self, "reports", _frozen(self.reports))
        object.__setattr__(self, "parameters", _frozen(self.parameters))
