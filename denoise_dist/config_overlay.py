"""Settings made of dataclass sections, overlaid by YAML files and command-line flags:
the machinery behind `config`, which knows nothing of its fields. Field names are unique
across sections, so each is one flat YAML key and one flag (`batch_size` ->
`--batch-size`); a YAML file may also use the section form (`optim: {lr: 0.001}`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from denoise_dist.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Settings = TypeVar("Settings", bound="DataclassInstance")


class Sections(Generic[Settings]):
    """The sections of a settings dataclass (each a dataclass) and every field in them,
    with its type resolved. `aliases`: per field, old spellings and what they mean now."""

    def __init__(self, settings: type[Settings], aliases: dict[str, dict]):
        hints = typing.get_type_hints(settings)
        self.classes: dict[str, type] = {
            f.name: hints[f.name] for f in dataclasses.fields(settings)
        }
        self.aliases = aliases
        self.fields: dict[str, tuple[str, dataclasses.Field, Any]] = {}  # name -> section, ...
        for section, cls in self.classes.items():
            field_types = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                assert f.name not in self.fields, f"field name {f.name} is not unique"
                self.fields[f.name] = (section, f, field_types[f.name])

    def overlay(self, cfg: Settings, values: dict, source: str) -> Settings:
        """Apply flat or sectioned overrides; unknown keys are errors."""
        for key, value in values.items():
            if key in self.classes and isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    if self.fields.get(sub_key, (None,))[0] != key:
                        raise ConfigError(f"unknown key {key}.{sub_key} in {source}")
                    self.overlay(cfg, {sub_key: sub_value}, source)
                continue
            name = key.replace("-", "_")
            if name not in self.fields:
                raise ConfigError(f"unknown key {key!r} in {source}")
            section, _, tp = self.fields[name]
            aliases = self.aliases.get(name, {})
            if isinstance(value, str | bool) and value in aliases:
                value = aliases[value]
            setattr(getattr(cfg, section), name, _coerce(name, value, tp))
        return cfg

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """One flag per field; defaults are suppressed so only explicit flags overlay."""
        parser.add_argument("--config", metavar="YAML", help="YAML file overlaid on the defaults.")
        groups = {section: parser.add_argument_group(section) for section in self.classes}
        for name, (section, f, tp) in self.fields.items():
            base, _ = _strip_optional(tp)
            flag = "--" + name.replace("_", "-")
            help_text = f"{f.metadata['help']} (default: {f.default})"
            kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
            if base is bool:
                groups[section].add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            elif typing.get_origin(base) is tuple:
                item_type = typing.get_args(base)[0]
                groups[section].add_argument(flag, type=item_type, nargs="*", **kwargs)
            else:
                groups[section].add_argument(flag, type=base, **kwargs)


def _strip_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


# A scalar field's type -> whether a YAML/CLI value fits it, and what it must be.
SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda value: isinstance(value, bool), "true or false"),
    int: (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    float: (
        lambda value: isinstance(value, int | float) and not isinstance(value, bool),
        "a number",
    ),
    str: (lambda value: isinstance(value, str), "a string"),
}


def _coerce(name: str, value: Any, tp) -> Any:
    """Check a YAML/CLI value against the field type; ints are accepted for floats."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    if typing.get_origin(base) is tuple:
        item_type = typing.get_args(base)[0]
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(name, v, item_type) for v in items)
    fits, what = SCALARS[base]
    if not fits(value):
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return float(value) if base is float else value


def load_yaml(path: str) -> dict:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values
