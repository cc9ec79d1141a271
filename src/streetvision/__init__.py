"""StreetVision Stage 1: a leakage-proof training pipeline for a selective roadwork classifier."""

from importlib.metadata import version as _installed_version

# pyproject.toml holds the version; the installed distribution reports it.
__version__ = _installed_version("streetvision")

# Every use of the library logs through one console handler (streetvision.progress), a KFP task's included.
from streetvision import progress as _progress  # noqa: E402, F401
