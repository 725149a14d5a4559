"""YAML as the config reads it: UTF-8 only, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys, so a second ``ensemble:`` block silently replaced the first; here that is
refused with both lines named. Merge keys (``<<: *base``) still override what they merge, as YAML defines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ensemble.base.errors import ConfigError

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(f"line {line}: key {key!r} appears twice in one mapping (first at line {first_line}); "
                         "YAML would keep only the last, so merge the two")


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
        return super().construct_mapping(node, deep)


def loads(text: str) -> Any:
    """``yaml.safe_load`` refusing duplicate keys (:class:`DuplicateKey`, a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def read_text(path: Path) -> str:
    """The file's text, which must be UTF-8 (a byte-order mark is allowed): one line naming the file otherwise."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save the file as "
                          "UTF-8") from None


def load_file(path: Path) -> Any:
    """A YAML file read by :func:`read_text` and :func:`loads`; any YAML error is one line naming the file."""
    text = read_text(path)
    try:
        return loads(text)
    except DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
