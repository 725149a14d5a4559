"""The one config loader: YAML (strict: duplicate keys refused) plus ``--set a.b=c`` overrides, validated into a
pydantic schema, with one-line errors naming the field and where it came from."""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ensemble.base.errors import ConfigError
from ensemble.base.strict_yaml import DuplicateKey, load_file, loads

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Flag(str):
    """A command-line flag's value as an override (``--output-dir X`` is ``output_dir="X"``): the value is taken
    literally, never parsed as YAML (``''`` stays empty, ``#`` is no comment), and errors name the flag."""

    def __new__(cls, flag: str, key: str, value: str):
        item = super().__new__(cls, f"{key}={json.dumps(value)}")  # a JSON string is a YAML double-quoted scalar
        item.flag = flag
        return item


def _named(item: str) -> str:
    return item.flag if isinstance(item, Flag) else f"--set {item}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value parsed as YAML, so numbers, booleans and lists work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = loads(raw) if raw.strip() else None
    except DuplicateKey as err:
        raise ConfigError(f"{_named(item)}: {err}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{_named(item)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return tree


def _error_source(loc: tuple, overrides: list[str], source: str) -> str:
    """The ``--set`` argument that supplied the value at ``loc`` (the last one wins, as when applied), else the file."""
    dotted = [str(part) for part in loc]
    for item in reversed(overrides):
        path, _ = parse_override(item)
        if dotted[: len(path)] == path or path[: len(dotted)] == dotted:
            return _named(item)
    return source


def describe_validation_error(err: ValidationError, source: str = "config", overrides: list[str] = ()) -> str:
    """One clause per error, each naming where its value came from: ``--set a.b=x: a.b: must be > 0 (got -1)``."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        parts.append(f"{_error_source(e['loc'], list(overrides), source)}: {key}: {msg}")
    return "; ".join(parts)


def validate_config(schema: type[ConfigT], tree: dict, source: str = "config", overrides: list[str] = ()) -> ConfigT:
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source, overrides)) from None


def api_arguments(schema: type[ConfigT], config: ConfigT | dict | None, kwargs: dict,
                  aliases: dict[str, str] | None = None, where: str = "config",
                  accepted: Collection[str] = (), positional: Collection[str] = ()) -> tuple[ConfigT, dict]:
    """The Python API's one mapping to the config: ``config`` (a section, a dict or None) with the keyword arguments
    that name its fields (or an alias such as ``n_members`` -> ``members``) applied and validated; the keywords left
    over, each one of ``accepted`` (:class:`~ensemble.engine.fit.FitOptions`' fields), are returned for it. Any other
    keyword
    is a one-line error naming ``where`` and the nearest valid keyword (never one of the caller's ``positional``
    parameters, which a field of the same name cannot be passed as)."""
    if not isinstance(config, (BaseModel, dict, type(None))):
        raise ConfigError(f"{where}: config must be a {schema.__name__}, a dict or None, got {type(config).__name__}")
    tree = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    aliases = aliases or {}
    rest = {}
    for key, value in kwargs.items():
        path = aliases.get(key, key).split(".")
        if path[0] not in schema.model_fields:
            if key not in accepted:
                valid = [name for name in [*schema.model_fields, *aliases, *accepted] if name not in positional]
                raise ConfigError(unknown_keyword(where, key, valid))
            rest[key] = value
            continue
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            node[part] = child = child.model_dump() if isinstance(child, BaseModel) else dict(child or {})
            node = child
        node[path[-1]] = value
    return validate_config(schema, tree, where), rest


def unknown_keyword(where: str, key: str, valid: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(sorted(set(valid)))}"
    return f"{where}: unknown keyword argument {key!r}; {hint}"


def load_config(schema: type[ConfigT], path: str | Path | None = None, overrides: list[str] = (),
                prepare=None) -> ConfigT:
    """Read YAML (or start from the schema defaults), apply ``--set`` overrides, call ``prepare(tree, path)`` (say, to
    import plugins that register names the schema checks), validate."""
    tree: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        tree = load_file(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(tree, list(overrides))
    if prepare is not None:
        prepare(tree, path)
    return validate_config(schema, tree, source, list(overrides))


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
