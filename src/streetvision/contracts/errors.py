"""Named errors that say what is wrong, where, and how to fix it."""

from __future__ import annotations


class ContractError(ValueError):
    """Base of every contract failure. The message always has three parts: what, where, how to fix."""

    def __init__(self, what: str, where: str, fix: str):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(f"{what}\n  where: {where}\n  fix:   {fix}")


class LeakageViolationError(ContractError):
    """A phase was about to read a split its role may not read (or data of unknown/mixed provenance)."""


class IncompleteArtifactError(ContractError):
    """An artifact without its completion record: the phase that wrote it did not finish."""


class CheckpointError(ContractError):
    pass


class LogitsError(ContractError):
    pass


class LabelsError(ContractError):
    pass


class PolicyError(ContractError):
    pass


class BundleError(ContractError):
    pass


class DataError(ContractError):
    """Input data that cannot be used (too many bad records, empty split, unreadable manifest ...)."""
