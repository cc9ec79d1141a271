"""KFP artifact types that encode the split rules: one type per split and per split's logits.

A component's signature names only the types its role may read, so wiring VAL_TEST data into a
policy-fitting phase fails when the pipeline is defined (KFP compares schema titles). KFP accepts custom
types only in the `system.` namespace. The local runner drops these types downstream, which is why every
phase also checks the artifact's metadata at run time (streetvision.contracts.metadata).
"""

from kfp import dsl

from streetvision.contracts.splits import Split


class TrainSplit(dsl.Artifact):
    schema_title = "system.TrainSplit"


class ValSelectSplit(dsl.Artifact):
    schema_title = "system.ValSelectSplit"


class ValCalibSplit(dsl.Artifact):
    schema_title = "system.ValCalibSplit"


class ValTestSplit(dsl.Artifact):
    schema_title = "system.ValTestSplit"


class ValSelectLogits(dsl.Artifact):
    schema_title = "system.ValSelectLogits"


class ValCalibLogits(dsl.Artifact):
    schema_title = "system.ValCalibLogits"


class DataReport(dsl.Artifact):
    schema_title = "system.DataReport"


class Checkpoint(dsl.Artifact):
    schema_title = "system.Stage1Checkpoint"


class SelectivePolicy(dsl.Artifact):
    """Exactly one of these feeds the bundle (phase 6 has a single, required policy input).

    One type for all three kinds (threshold from phase 2, gate from phase 3, SCRC from phase 5), the kind in
    metadata and policy.json: KFP has no union inputs, so a single required input of one shared type is what
    makes "none" (missing required input) and "two" (no second input) impossible to wire. The bundle
    validator checks the kind and that exactly one policy file is present.
    """

    schema_title = "system.SelectivePolicy"


class AdaptedBackbone(dsl.Artifact):
    """Phase 4's output: the ExPLoRA-adapted backbone (merged timm weights, the adapter alone, SSL curves)."""

    schema_title = "system.AdaptedBackbone"


class DeploymentBundle(dsl.Artifact):
    schema_title = "system.DeploymentBundle"


class EvaluationResult(dsl.Artifact):
    schema_title = "system.EvaluationResult"


SPLIT_DATA_TYPES = {
    TrainSplit.schema_title: Split.TRAIN,
    ValSelectSplit.schema_title: Split.VAL_SELECT,
    ValCalibSplit.schema_title: Split.VAL_CALIB,
    ValTestSplit.schema_title: Split.VAL_TEST,
}
SPLIT_LOGITS_TYPES = {
    ValSelectLogits.schema_title: Split.VAL_SELECT,
    ValCalibLogits.schema_title: Split.VAL_CALIB,
}


def split_of_type(schema_title: str) -> Split | None:
    """The split an artifact type carries, or None for split-free artifacts (checkpoints, policies ...)."""
    return SPLIT_DATA_TYPES.get(schema_title) or SPLIT_LOGITS_TYPES.get(schema_title)
