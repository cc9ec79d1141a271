"""Typed config: dataclasses (schema.py), YAML defaults (defaults/), overrides and validation (loader.py)."""

from streetvision.config.loader import (
    ConfigError,
    config_from_json,
    config_from_yaml_file,
    config_to_json,
    config_to_yaml,
    load_config,
)
from streetvision.config.schema import PHASE_NAMES, Config

__all__ = [
    "PHASE_NAMES",
    "Config",
    "ConfigError",
    "config_from_json",
    "config_from_yaml_file",
    "config_to_json",
    "config_to_yaml",
    "load_config",
]
