"""Load, override and validate the typed config.

Defaults live once, in the models of ``schema.py``. A preset (``defaults/<group>/<name>.yaml``) holds
only what it changes. Override syntax follows Hydra: ``group=preset`` picks a preset for a group that has
them (``model=vit_small``), ``a.b.c=value`` sets one key (the value is parsed as YAML, so ``1``, ``true``,
``[a, b]`` and ``null`` mean what they say), and a ``--config`` file may pick presets in a ``defaults:`` key.
The order of the layers is in :func:`load_config`. Every problem — unknown keys, wrong types, bad values,
unknown presets — is collected and raised once as :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from streetvision.config.schema import Config, Group
from streetvision.contracts.errors import ConfigError  # here too: `from streetvision.config import ConfigError`

DEFAULTS_PACKAGE = "streetvision.config"
_MISSING = object()


def _defaults_dir():
    return resources.files(DEFAULTS_PACKAGE).joinpath("defaults")


def preset_groups() -> dict[str, list[str]]:
    """Groups that have preset files, e.g. {'model': ['demo_tiny', 'vit_base', 'vit_small']}."""
    groups = {}
    for entry in _defaults_dir().iterdir():
        if entry.is_dir() and not entry.name.startswith("_"):
            groups[entry.name] = sorted(p.name[:-5] for p in entry.iterdir() if p.name.endswith(".yaml"))
    return groups


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source)
    return data


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_preset(group: str, preset, where: str, problems: list[str]) -> bool:
    groups = preset_groups()
    if group not in groups:
        problems.append(f"{where}: {group!r} has no presets; groups with presets: {sorted(groups)}")
        return False
    if preset not in groups[group]:
        problems.append(f"{where}: unknown {group} preset {preset!r}; available: {groups[group]}")
        return False
    return True


def _split_overrides(overrides: list[str], problems: list[str]) -> tuple[dict[str, str], list[tuple[str, Any]]]:
    groups = preset_groups()
    selections: dict[str, str] = {}
    assignments: list[tuple[str, Any]] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value, e.g. training.epochs=1 or model=vit_small")
            continue
        if key in groups and "." not in key:
            if _check_preset(key, raw, f"override {item!r}", problems):
                selections[key] = raw
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        assignments.append((key, value))
    return selections, assignments


def _file_selections(data: dict, source: str, problems: list[str]) -> dict[str, str]:
    """Remove and return a config file's preset choices, its `defaults:` as Hydra writes them: a mapping
    ``{training: gpu}`` or a list ``[{training: gpu}, {model: vit_small}]`` (``_self_`` may end the list: the
    file's own keys always apply after its presets)."""
    raw = data.pop("defaults", None)
    if raw is None:
        return {}
    where = f"{source}: defaults"
    if isinstance(raw, list):
        if raw and raw[-1] == "_self_":
            raw = raw[:-1]
        entries: list[tuple[Any, Any]] = []
        for item in raw:
            if not (isinstance(item, dict) and len(item) == 1):
                problems.append(
                    f"{where}: expected one {{group: preset}} per list item (with _self_ only last), got {item!r}"
                )
                continue
            entries += item.items()
    elif isinstance(raw, dict):
        entries = list(raw.items())
    else:
        problems.append(
            f"{where}: expected a mapping like {{training: gpu}} or a list like [{{training: gpu}}], "
            f"got {type(raw).__name__} {raw!r}"
        )
        return {}
    return {group: preset for group, preset in entries if _check_preset(group, preset, where, problems)}


def _set_dotted(data: dict, dotted: str, value: Any, problems: list[str]) -> None:
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part, _MISSING)
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            problems.append(f"override {dotted}: {where!r} is not a config group{_suggest(part, node)}")
            return
        node = child
    if parts[-1] not in node:
        problems.append(f"override {dotted}: unknown key{_suggest(parts[-1], node)}")
        return
    node[parts[-1]] = value


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(loc: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _inner_model(annotation) -> type[Group] | None:
    """The config group inside an annotation (`SourceConfig` in `list[SourceConfig]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, Group):
        return annotation
    return next(filter(None, map(_inner_model, typing.get_args(annotation))), None)


def _field_at(loc: tuple) -> tuple[type[Group] | None, FieldInfo | None]:
    """The group that holds the last key of `loc`, and that key's field (None past the groups)."""
    model: type[Group] | None = Config
    info: FieldInfo | None = None
    for i, part in enumerate(loc):
        if isinstance(part, int):  # a list item: the same group, no field of its own
            info = None
            continue
        if model is None:
            return None, None
        info = model.group_keys().get(part)
        if i < len(loc) - 1:
            model = _inner_model(info.annotation) if info else None
    return model, info


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}
_TYPE_NAMES |= {"list_type": "a list", "model_type": "a mapping", "dict_type": "a mapping"}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _bounds(info: FieldInfo | None, ctx: dict) -> str:
    """A field's whole valid range ("in [0, 1)"), else the one bound pydantic reports ("> 0")."""
    found = {k: getattr(m, k) for m in (info.metadata if info else []) for k in _BOUNDS if hasattr(m, k)} or ctx
    low = next(((k, found[k]) for k in ("ge", "gt") if k in found), None)
    high = next(((k, found[k]) for k in ("le", "lt") if k in found), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
    one = low or high
    if one is None:  # pydantic reported a bound the field does not declare
        return "out of range"
    key, bound = one
    return f"{_BOUNDS[key]} {bound}"


def _describe(error: Any) -> list[str]:
    """One pydantic error as the config's problem lines ("dotted.key: what is wrong")."""
    loc, kind, value, ctx = error["loc"], error["type"], error.get("input"), error.get("ctx", {})
    where = _dotted(loc) or "config"
    model, info = _field_at(loc)
    note = f" ({info.description})" if info and info.description else ""
    if kind == "extra_forbidden":
        return [f"{where}: unknown key{_suggest(str(loc[-1]), model.group_keys() if model else [])}"]
    if kind in _TYPE_NAMES:
        return [f"{where}: expected {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"]
    if kind == "literal_error":
        return [f"{where}: must be {ctx['expected']}, got {value!r}"]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return [f"{where}: must be {_bounds(info, ctx)}, got {value!r}{note}"]
    if kind == "string_pattern_mismatch":
        return [f"{where}: {info.description if info else 'must match ' + ctx['pattern']}, got {value!r}"]
    if kind == "value_error":  # a field validator's own sentence
        return [f"{where}: {ctx['error']}"]
    return [f"{where}: {error['msg']}"]


def config_from_dict(data: dict, source: str = "config", problems: list[str] | None = None) -> Config:
    """Validate a whole config tree; raise one ConfigError with `problems` and every problem found in it."""
    problems = list(problems or [])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems += [line for error in exc.errors(include_url=False) for line in _describe(error)]
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _compose(overrides: list[str] | None, config_file: str | Path | None) -> tuple[dict, dict[str, str], list[str]]:
    """The config tree before validation, the preset chosen for each group, and the problems found so far."""
    problems: list[str] = []
    cli_selections, assignments = _split_overrides(list(overrides or []), problems)
    package_file = f"{DEFAULTS_PACKAGE}/defaults/config.yaml"
    package = _read_yaml(_defaults_dir().joinpath("config.yaml").read_text(), package_file)
    selections = _file_selections(package, package_file, problems)
    user: dict = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            problems.append(f"--config {path}: file not found")
        else:
            user = _read_yaml(path.read_text(), str(path))
            selections.update(_file_selections(user, str(path), problems))
    selections.update(cli_selections)  # a group has one preset: the command line's choice replaces the file's

    tree = _deep_merge(config_to_dict(Config()), package)
    for group, preset in selections.items():
        text = _defaults_dir().joinpath(group, f"{preset}.yaml").read_text()
        tree[group] = _deep_merge(tree.get(group, {}), _read_yaml(text, f"defaults/{group}/{preset}.yaml"))
    tree = _deep_merge(tree, user)
    for key, value in assignments:
        _set_dotted(tree, key, value, problems)
    return tree, selections, problems


def load_config(overrides: list[str] | None = None, config_file: str | Path | None = None) -> Config:
    """The typed config, validated as a whole. Layers, each over the one before:

    1. the schema's defaults (``Config()``; the package's ``defaults/config.yaml`` picks the default presets),
    2. the presets a ``--config`` file picks in its ``defaults:`` (``defaults: {training: gpu}``),
    3. the presets picked on the command line (``training=cpu``; each replaces the file's pick for its group),
    4. the ``--config`` file's own keys,
    5. dotted overrides (``training.epochs=1``).

    Args:
        overrides: ``key=value`` and ``group=preset`` strings, as on the command line.
        config_file: a YAML file merged over the defaults, before the overrides.

    Returns:
        The validated config; ``load_config()`` equals ``Config()``.

    Raises:
        ConfigError: every problem found (unknown keys with a did-you-mean, wrong types, broken cross-field
            rules, a missing file), each with its dotted key.
    """
    tree, _, problems = _compose(overrides, config_file)
    return config_from_dict(tree, "config and overrides", problems)


def selected_presets(overrides: list[str] | None = None, config_file: str | Path | None = None) -> dict[str, str]:
    """The preset each group ends up with for these overrides and config file, e.g. {'model': 'demo_tiny'}."""
    return _compose(overrides, config_file)[1]


def validate_file(path: str | Path, overrides: list[str] | None = None) -> str:
    """Check one YAML file as it is used and say, in one line, what it resolved to.

    A preset of this package (``defaults/<group>/<name>.yaml``) is checked as ``group=name`` picks it, over the
    defaults; any other file as a ``--config`` file.

    Args:
        path: the YAML file.
        overrides: more ``key=value`` overrides applied over it.

    Returns:
        One ``OK: ...`` line naming the presets it resolved to.

    Raises:
        ConfigError: every problem in the file (or a missing file).
    """
    path, overrides = Path(path), list(overrides or [])
    group, name = path.parent.name, path.stem
    defaults = Path(str(_defaults_dir())).resolve()
    preset = path.resolve().parent.parent == defaults and name in preset_groups().get(group, [])
    tree, presets, problems = _compose(
        [f"{group}={name}"] + overrides if preset else overrides, None if preset else path
    )
    config_from_dict(tree, str(path), problems)
    picked = ", ".join(f"{g}={n}" for g, n in presets.items())
    return f"OK: {path} is a valid {'preset' if preset else 'config file'} (presets: {picked})"


def config_to_dict(cfg: Config) -> dict:
    return cfg.model_dump()


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def config_to_json(cfg: Config) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def config_from_json(text: str) -> Config:
    """Parse the config a pipeline task receives (validated again: a hand-edited run can't skip checks).

    Raises:
        ConfigError: the text is not JSON, or not a valid config (every problem listed).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"not valid JSON: {exc}"], "pipeline parameter 'config'") from exc
    return config_from_dict(data, "pipeline parameter 'config'")


def config_from_yaml_file(path: str | Path) -> Config:
    """A whole config saved as YAML (a run folder's config.yaml), validated; ConfigError lists its problems."""
    return config_from_dict(_read_yaml(Path(path).read_text(), str(path)), str(path))
