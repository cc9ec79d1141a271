"""Split contracts: the split policy, artifact metadata checks and validators (no KFP here)."""

from streetvision.contracts.errors import (
    BundleError,
    CheckpointError,
    ContractError,
    DataError,
    IncompleteArtifactError,
    LabelsError,
    LeakageViolationError,
    LogitsError,
    PolicyError,
)
from streetvision.contracts.splits import ROLE_SPLITS, Role, Split, check_access

__all__ = [
    "BundleError",
    "CheckpointError",
    "ContractError",
    "DataError",
    "IncompleteArtifactError",
    "LabelsError",
    "LeakageViolationError",
    "LogitsError",
    "PolicyError",
    "ROLE_SPLITS",
    "Role",
    "Split",
    "check_access",
]
