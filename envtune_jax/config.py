"""Typed configuration: dataclasses loaded from YAML with `key=value` overrides.

Every concern (model, mesh, sampler, rl, environment, curriculum, checkpoint, logging) owns a
dataclass. `load(cls, yaml_path, overrides)` builds one, rejecting unknown keys (with the closest
valid key suggested) and values of the wrong type, so a typo fails loudly instead of silently.

A field that the chosen mode does not read is an error too, never a silent no-op: each config class
declares, in a `FIELD_USE` table of `ReadOnlyWhen` rows, which of its fields (or of its nested
configs' fields, by dotted path) are read only under some condition. `check_field_use` raises
`IgnoredFieldError` naming a field that is set (different from its default, or named by a `key=value`
override) while its condition does not hold; classes call it from `__post_init__`, and `load` calls it
again with the override keys, so a command-line override that would change nothing is caught even when
it repeats the default. (A YAML file may spell out a default that its mode ignores: recipes document
the paper's settings that way, and removing the line would change nothing.)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence, TypeVar

import yaml

from envtune_jax.atomic_files import write_text_atomic

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and why."""


def require_at_least(config: Any, minimum: float, *names: str) -> None:
    """Raises ConfigError naming the first field of `names` whose value is below `minimum` (for the
    `__post_init__` of config dataclasses: a zero or negative size is an error, never a silent no-op)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{name} must be ≥ {minimum}, got {value}")


class UnknownNameError(ConfigError):
    """A name is not in a registry; the message lists the closest valid name."""


def check_name(names: Collection[str], name: str, what: str) -> None:
    """Raises UnknownNameError naming the closest of `names` when `name` is not one of them."""
    if name in names:
        return
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownNameError(f"unknown {what} '{name}'.{hint} Valid: {', '.join(sorted(names))}.")


class IgnoredFieldError(ConfigError):
    """A field is set although the chosen mode does not read it; `path` is its dotted name."""

    def __init__(self, path: str, value: Any, reason: str):
        self.path, self.value, self.reason = path, value, reason
        super().__init__(f"{path}={value!r} has no effect: {reason}; remove it or change the setting it depends on")

    def under(self, prefix: str) -> "IgnoredFieldError":
        return IgnoredFieldError(f"{prefix}.{self.path}", self.value, self.reason)


@dataclasses.dataclass(frozen=True)
class ReadOnlyWhen:
    """A row of a config class's `FIELD_USE` table: `field` (a name, or a dotted path into a nested config)
    is read only when `applies(config)` is true; `reason` says so in words for the error message."""

    field: str
    reason: str
    applies: Callable[[Any], bool]


def get_path(config: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def _field_default(owner_cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(owner_cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _differs_from_default(config: Any, dotted: str) -> bool:
    *parents, name = dotted.split(".")
    owner = get_path(config, ".".join(parents)) if parents else config
    return getattr(owner, name) != _field_default(type(owner), name)


def field_is_set(config: Any, dotted: str, explicit: Collection[str] = (), prefix: str = "") -> bool:
    """Whether field `dotted` of `config` is set: named in `explicit` (as prefix + dotted) or not at its default."""
    return prefix + dotted in explicit or _differs_from_default(config, dotted)


def check_field_use(config: Any, explicit: Collection[str] = (), prefix: str = "") -> None:
    """Raises IgnoredFieldError for the first field of `config` (or of a config nested in it) that is set
    although its `FIELD_USE` row says the mode does not read it. Set means: its dotted path (from the
    top-level config) is in `explicit`, or its value differs from its default."""
    for row in getattr(type(config), "FIELD_USE", ()):
        if field_is_set(config, row.field, explicit, prefix) and not row.applies(config):
            raise IgnoredFieldError(prefix + row.field, get_path(config, row.field), row.reason)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_field_use(value, explicit, f"{prefix}{field.name}.")


def override_paths(overrides: Sequence[str]) -> set[str]:
    """Every dotted key (and its parents) that `key=value` overrides name, e.g. {"loss", "loss.kl_coef"}."""
    paths = set()
    for item in overrides:
        keys = item.split("=", 1)[0].strip().split(".")
        paths |= {".".join(keys[:n]) for n in range(1, len(keys) + 1)}
    return paths


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(sorted(valid))}."


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Converts `value` (from YAML or a CLI string) to `annotation`, or raises ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not fit {annotation}")
    if origin is typing.Literal:
        if isinstance(value, bool) and {"off", "on"} & set(args):  # YAML 1.1 reads a bare off / on as a bool
            value = "on" if value else "off"
        if value in args:
            return value
        raise ConfigError(
            f"{where}: {value!r} is not one of {list(args)}.{_suggest(str(value), [str(a) for a in args])}"
        )
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple, Sequence):
        if isinstance(value, str):
            value = (
                parse_yaml(value, where, in_file=False)
                if value.strip().startswith("[")
                else [v for v in value.split(",") if v]
            )
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = parse_yaml(value, where, in_file=False)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if "e" in value.lower() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Builds dataclass `cls` from a (nested) mapping; unknown keys raise ConfigError."""
    types_by_name = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in types_by_name:
            raise ConfigError(f"unknown config key '{path}'.{_suggest(key, list(types_by_name))}")
        kwargs[key] = _coerce(value, types_by_name[key], path)
    try:
        return cls(**kwargs)
    except IgnoredFieldError as exc:
        raise (exc.under(where) if where else exc) from None
    except (TypeError, ValueError) as exc:  # __post_init__ checks: named with the section they belong to
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass, suitable for YAML/JSON."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` strings to a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. rl.learning_rate=1e-6)")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{key}' is not a section")
        parsed = parse_yaml(raw, f"override '{item}'", in_file=False) if raw.strip() else ""
        node[keys[-1]] = raw if isinstance(parsed, (dict, list)) and raw.strip()[:1] not in "[{" else parsed
    return data


def _validate_overrides(cls: type, overrides: Sequence[str]) -> None:
    """Rejects override keys that do not exist, naming the closest valid one."""
    for item in overrides:
        dotted = item.split("=", 1)[0].strip()
        node_cls: Any = cls
        walked = []
        for key in dotted.split("."):
            walked.append(key)
            if not dataclasses.is_dataclass(node_cls):
                break
            types_by_name = _field_types(node_cls)
            if key not in types_by_name:
                raise ConfigError(f"unknown config key '{'.'.join(walked)}'.{_suggest(key, list(types_by_name))}")
            node_cls = types_by_name[key]


def load_yaml_with_includes(path: str | Path, path_fields: Sequence[str] = ()) -> dict[str, Any]:
    """Reads a YAML file; a top-level `base: other.yaml` (relative to this file) is merged underneath.

    `path_fields` name top-level keys holding a path or a list of paths relative to the file that sets
    them: those a base file sets are rewritten relative to this file, so they still point where they did.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml(_read_text(path), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be the path of another YAML file, got {base!r}")
        base_path = path.parent / base
        merged = load_yaml_with_includes(base_path, path_fields)
        for key in path_fields:
            if key in merged:
                merged[key] = _rebase(merged[key], base_path.parent, path.parent)
        _deep_merge(merged, data)
        return merged
    return data


def parse_yaml(text: str, source: str, in_file: bool = True) -> Any:
    """yaml.safe_load, with a syntax error as one ConfigError line naming `source` (with line and column
    when it is a file)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None and in_file else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


def _rebase(value: Any, old_dir: Path, new_dir: Path) -> Any:
    """A relative path (or list of them) relative to `old_dir`, rewritten relative to `new_dir`."""
    if isinstance(value, list):
        return [_rebase(item, old_dir, new_dir) for item in value]
    if not isinstance(value, str) or Path(value).is_absolute():
        return value
    return os.path.normpath(os.path.relpath(old_dir / value, new_dir))


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def load(
    cls: type[T], yaml_path: str | Path | None = None, overrides: Sequence[str] = (), path_fields: Sequence[str] = ()
) -> T:
    """Loads `cls` from an optional YAML file plus `key=value` overrides (`path_fields`: see
    `load_yaml_with_includes`)."""
    data = load_yaml_with_includes(yaml_path, path_fields) if yaml_path else {}
    _validate_overrides(cls, overrides)
    apply_overrides(data, overrides)
    config = from_dict(cls, data)
    check_field_use(config, override_paths(overrides))
    return config


def _drop_unread(config: Any, data: dict[str, Any]) -> None:
    """Removes from `data` (to_dict of `config`) every field that config's mode does not read."""
    for row in getattr(type(config), "FIELD_USE", ()):
        if not row.applies(config):
            *parents, name = row.field.split(".")
            node = data
            for key in parents:
                node = node[key]
            node.pop(name, None)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and isinstance(data.get(field.name), dict):
            _drop_unread(value, data[field.name])


def in_effect(config: Any) -> dict[str, Any]:
    """`to_dict(config)` without the fields that the chosen modes ignore: what `save` writes, and what two
    sets of settings are compared by."""
    data = to_dict(config)
    _drop_unread(config, data)
    return data


def save(config: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (saved next to every run's checkpoints), replacing `path` whole:
    every field in effect, none that the chosen modes ignore, so `load` reads it back to an equal config."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(in_effect(config), sort_keys=False))
