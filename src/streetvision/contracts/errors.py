"""Named errors that say what is wrong, where, and how to fix it.

One small hierarchy; the command line maps each domain to its own exit status (``streetvision.cli``):

    StreetVisionError                     what / where / fix
    ├── ContractError (ValueError)        input that breaks a contract
    │   ├── ConfigError                   a config or command line that cannot be used
    │   ├── DataError                     input data that cannot be used
    │   ├── LeakageViolationError         a split read by a role that may not read it
    │   └── IntegrityError                an artifact that is incomplete, altered or malformed
    ├── TrainingError                     training that cannot go on (divergence, a failed worker)
    └── ClusterError                      the Kubeflow Pipelines server refused or could not be reached
"""

from __future__ import annotations

# The fix a config error gets when it does not name its own.
CONFIG_FIX = "fix the keys above (see `streetvision config` for every key and its default)"


class StreetVisionError(Exception):
    """Base of every domain error. The message always has three parts: what, where, how to fix."""

    def __init__(self, what: str, where: str, fix: str):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(f"{what}\n  where: {where}\n  fix:   {fix}")


class ContractError(StreetVisionError, ValueError):
    """Input (config, data, artifacts) that breaks a contract; a ValueError, as bad input is."""


class ConfigError(ContractError):
    """A config or command line that cannot be used: one problem (`problems` a string), or every problem
    found in a config, one per line (`problems` a list), with one fix."""

    def __init__(self, problems: str | list[str], where: str = "config", fix: str = CONFIG_FIX):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if isinstance(problems, str):
            what = problems
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            what = f"{len(self.problems)} problem(s) in {where}:\n{lines}"
        super().__init__(what, where, fix)


class DataError(ContractError):
    """Input data that cannot be used (too many bad records, empty split, unreadable manifest ...)."""


class LeakageViolationError(ContractError):
    """A phase was about to read a split its role may not read (or data of unknown/mixed provenance)."""


class IntegrityError(ContractError):
    """An artifact that is incomplete, altered or malformed."""


class IncompleteArtifactError(IntegrityError):
    """An artifact without its completion record: the phase that wrote it did not finish."""


class CheckpointError(IntegrityError):
    pass


class LogitsError(IntegrityError):
    pass


class LabelsError(IntegrityError):
    pass


class PolicyError(IntegrityError):
    pass


class BundleError(IntegrityError):
    pass


class TrainingError(StreetVisionError):
    """Training that cannot go on: not bad input, so not a ValueError."""


class TrainingDivergedError(TrainingError):
    """The loss became NaN or infinite."""


class ClusterError(StreetVisionError):
    """The Kubeflow Pipelines server refused a request."""


class ServerUnreachableError(ClusterError):
    """The Kubeflow Pipelines server could not be reached (connection, DNS, TLS or timeout)."""
