"""Split contracts: the split policy, artifact metadata checks and validators (no KFP here)."""

from streetvision.contracts.errors import (
    BundleError,
    CheckpointError,
    ClusterError,
    ConfigError,
    ContractError,
    DataError,
    IncompleteArtifactError,
    IntegrityError,
    LabelsError,
    LeakageViolationError,
    LogitsError,
    PolicyError,
    ServerUnreachableError,
    StreetVisionError,
    TrainingDivergedError,
    TrainingError,
)
from streetvision.contracts.splits import ROLE_SPLITS, Role, Split, check_access

__all__ = [
    "BundleError",
    "CheckpointError",
    "ClusterError",
    "ConfigError",
    "ContractError",
    "DataError",
    "IncompleteArtifactError",
    "IntegrityError",
    "LabelsError",
    "LeakageViolationError",
    "LogitsError",
    "PolicyError",
    "ServerUnreachableError",
    "StreetVisionError",
    "TrainingDivergedError",
    "TrainingError",
    "ROLE_SPLITS",
    "Role",
    "Split",
    "check_access",
]
