"""The one adapter between KFP artifacts and a phase function: artifacts -> `PhasePaths` -> the phase ->
its `PhaseResult` -> artifact metadata, Metrics, ClassificationMetrics and HTML files.

Artifacts are told apart by the phase registry (inputs and outputs with completion records) and by their KFP
type (Metrics, ClassificationMetrics, HTML); anything else is a wiring mistake and fails before the phase runs.
Every output gets a file behind its path, because KFP's local cache treats an output without one as missing
and would rerun the task on `--resume`.
"""

from __future__ import annotations

import json
from collections import namedtuple

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Metrics

from streetvision import io as storage
from streetvision.config import config_from_json
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.registry import PHASE_SPECS


def run_component(phase: str, config: str, **artifacts: Artifact):
    """Run `phase` (a registry name) with the component's config JSON and its artifacts, by parameter name.

    Returns the phase's output parameters as a named tuple (what a component with a NamedTuple return
    annotation hands KFP), or None when the phase has none."""
    spec = PHASE_SPECS[phase]
    paths = PhasePaths.of(
        phase, **{name: a.path for name, a in artifacts.items() if name in spec.inputs or name in spec.outputs}
    )
    extras = {name: a for name, a in artifacts.items() if name not in spec.inputs and name not in spec.outputs}
    for name, artifact in extras.items():
        if isinstance(artifact, HTML) and name not in spec.reports:
            raise TypeError(f"{phase} component: HTML output {name!r} is not a report the phase registry declares")
        if not isinstance(artifact, (Metrics, ClassificationMetrics, HTML)):
            raise TypeError(
                f"{phase} component: artifact {name!r} ({type(artifact).__name__}) is neither an input or output "
                f"the phase registry declares ({', '.join([*spec.inputs, *spec.outputs])}) nor Metrics, "
                "ClassificationMetrics or HTML"
            )

    result: PhaseResult = spec.library_function()(config_from_json(config), paths)

    for name, metadata in result.outputs.items():
        artifacts[name].metadata.update(metadata)
    for name, artifact in extras.items():
        if isinstance(artifact, Metrics):
            for key, value in result.metrics.items():
                artifact.log_metric(key, value)
            storage.write_text(artifact.path, json.dumps(dict(result.metrics), indent=2))
        elif isinstance(artifact, ClassificationMetrics):
            curves = result.classification
            if curves is None:
                raise TypeError(f"{phase} component: {name!r} is ClassificationMetrics, the phase returns no curves")
            artifact.log_confusion_matrix(curves.label_names, curves.confusion_matrix)
            artifact.log_roc_curve(curves.fpr, curves.tpr, curves.thresholds)
            roc = {"fpr": curves.fpr, "tpr": curves.tpr, "thresholds": curves.thresholds}
            storage.write_text(artifact.path, json.dumps({"confusion_matrix": curves.confusion_matrix, "roc": roc}))
        else:  # HTML: PhaseResult holds every report the registry declares
            storage.write_text(artifact.path, result.reports[name])
    if not result.parameters:
        return None
    return namedtuple("Outputs", list(result.parameters))(**result.parameters)
