"""StreetVision Stage 1: a leakage-proof training pipeline for a selective roadwork classifier."""

__version__ = "0.1.0"
