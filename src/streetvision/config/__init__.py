"""Typed config: pydantic models and defaults (schema.py), presets (defaults/), composition and errors (loader.py)."""

from streetvision.config.loader import (
    ConfigError,
    config_from_dict,
    config_from_json,
    config_from_yaml_file,
    config_to_json,
    config_to_yaml,
    load_config,
    preset_groups,
    selected_presets,
    validate_file,
)
from streetvision.config.schema import PHASE_NAMES, Config

__all__ = [
    "PHASE_NAMES",
    "Config",
    "ConfigError",
    "config_from_dict",
    "config_from_json",
    "config_from_yaml_file",
    "config_to_json",
    "config_to_yaml",
    "load_config",
    "preset_groups",
    "selected_presets",
    "validate_file",
]
