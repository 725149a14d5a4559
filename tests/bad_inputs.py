"""Hypothesis strategies for tests/test_generated_bad_input.py: invalid configs, invalid npz datasets, damaged run
folders. Each drawn case says what it breaks; the test asserts the CLI's promise for it.

The config's keys and the ranges a value must lie in are read from the schema (distill.config.Config): which keys
exist is the schema's business; what the CLI does with a value outside them is what the tests check.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field

import annotated_types as at
import numpy as np
import yaml
from hypothesis import strategies as st
from pydantic import BaseModel

from distill.config import Config


def _unwrap(annotation):
    """(the annotation without ``None``, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), nullable  # noqa: UP007 - built
    return annotation, False


def _model(annotation) -> type[BaseModel] | None:
    inner, _ = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _walk(model: type[BaseModel], prefix: tuple = ()):
    yield prefix, model, None
    for name, info in model.model_fields.items():
        sub = _model(info.annotation)
        if sub is not None:
            yield from _walk(sub, (*prefix, name))
        else:
            yield (*prefix, name), None, info


SECTIONS = [(path, model) for path, model, _ in _walk(Config) if model is not None]
LEAVES = [(path, info) for path, _, info in _walk(Config) if info is not None]


# --- near-miss spellings ---

def _near_misses(name: str) -> list[str]:
    """Typos of ``name``: a letter dropped, doubled, swapped with the next, or the case of the first changed."""
    out = {name[:i] + name[i + 1:] for i in range(len(name))}
    out |= {name[:i] + name[i] + name[i:] for i in range(len(name))}
    out |= {name[:i] + name[i + 1] + name[i] + name[i + 2:] for i in range(len(name) - 1)}
    out |= {name[:1].upper() + name[1:], name.replace("_", "-"), name + "s"}
    return sorted(m for m in out if m and m != name)


@st.composite
def unknown_key(draw) -> tuple[tuple, str]:
    """(path of a key no section has, at any depth, one typo away from a real one; the dotted path to name)."""
    section, model = draw(st.sampled_from(SECTIONS))
    real = draw(st.sampled_from(sorted(model.model_fields)))
    typo = draw(st.sampled_from([m for m in _near_misses(real) if m not in model.model_fields]))
    tail = draw(st.sampled_from([(), ("epochs",), ("name",)]))
    return (*section, typo, *tail), ".".join((*section, typo))


# --- values outside a field's type or range ---

def _bounds(info) -> dict:
    found = {}
    for meta in info.metadata:
        for kind in ("gt", "ge", "lt", "le"):
            if isinstance(meta, getattr(at, kind.capitalize())):
                found[kind] = getattr(meta, kind)
        if isinstance(meta, at.MinLen):
            found["min_len"] = meta.min_length
    return found


def _out_of_range(kind: type, bounds: dict) -> list:
    values = []
    if "gt" in bounds:
        values += [bounds["gt"], bounds["gt"] - 1]
    if "ge" in bounds:
        values += [bounds["ge"] - 1] if kind is int else [bounds["ge"] - 0.5, bounds["ge"] - 1e-3]
    if "lt" in bounds:
        values += [bounds["lt"], bounds["lt"] + 1] + ([math.inf] if kind is float else [])
    if "le" in bounds:
        values += [bounds["le"] + 1] if kind is int else [bounds["le"] + 0.5, math.inf]
    if kind is float and bounds:
        values.append(math.nan)  # outside every range: NaN compares false with any bound
    return [kind(v) if kind is int else v for v in values]


def _yaml_value(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ".inf"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def invalid_values(info) -> list[str]:
    """YAML texts no value of this field may take: the wrong type, out of range, or empty where text is named."""
    annotation, _ = _unwrap(info.annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    bounds = _bounds(info)
    if annotation is bool:
        return ["maybe", "2", "[true]", "{a: 1}"]
    if annotation is int:
        return ["many", "1.5", "[1, 2]", "{a: 1}"] + [_yaml_value(v) for v in _out_of_range(int, bounds)]
    if annotation is float:
        return ["abc", "[0.5]", "{a: 1}"] + [_yaml_value(v) for v in _out_of_range(float, bounds)]
    if origin is typing.Literal:
        return ["''", "1"] + [m for choice in args for m in _near_misses(str(choice))[:3] if m not in args]
    if origin is list:
        return ["abc", "{a: 1}", "[[[]]]"] + (["[]"] if bounds.get("min_len") else [])
    if origin is dict:  # a mapping of lists or of mappings refuses scalars inside; one of anything takes them
        return ["abc", "[1, 2]"] + (["{a: 1}"] if args and args[1] is not typing.Any else [])
    if origin in (typing.Union, types.UnionType):  # Literal['auto'] | bool, int | str
        return ["[1]", "{a: 1}", "''" if str in [_unwrap(a)[0] for a in args] or any(
            typing.get_origin(a) is typing.Annotated for a in args) else "maybe"]
    return ["''", "'  '", "[a]", "{a: 1}"]  # text: names, paths, URIs


@st.composite
def invalid_leaf(draw) -> tuple[str, str]:
    """(dotted key, a YAML value it may not take)."""
    path, info = draw(st.sampled_from(LEAVES))
    return ".".join(path), draw(st.sampled_from(invalid_values(info)))


def bad_set_syntax() -> st.SearchStrategy[tuple[str, str]]:
    """(a --set argument of the wrong form, text the message must contain)."""
    dotted = st.sampled_from([".".join(p) for p, _ in LEAVES])
    # a mapping field (model params, the sweep grid) takes sub-keys: not a case
    scalar = st.sampled_from([".".join(p) for p, info in LEAVES if typing.get_origin(info.annotation) is not dict])
    return st.one_of(
        dotted.map(lambda k: (k, k)),  # no '='
        st.sampled_from(["=3", " =3", "=", "==1"]).map(lambda s: (s, "--set")),
        dotted.map(lambda k: (k.replace(".", "..", 1) + "=1", "--set") if "." in k else (f".{k}=1", "--set")),
        scalar.map(lambda k: (f"{k}.x=1", k.split(".")[-1])),  # a value used as a section
    )


def _nested(path: tuple, value) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def yaml_with_unknown_key(path: tuple) -> str:
    return yaml.safe_dump(_nested(path, 1))


@st.composite
def duplicate_key_yaml(draw) -> tuple[str, str]:
    """(YAML text where one mapping names a key twice, that key)."""
    section, model = draw(st.sampled_from([s for s in SECTIONS if len(s[0]) <= 2]))
    key = draw(st.sampled_from(sorted(model.model_fields)))
    indent = "  " * len(section)
    head = "".join("  " * i + f"{part}:\n" for i, part in enumerate(section))
    sub = _model(model.model_fields[key].annotation)
    body = f"{indent}{key}: {{}}\n" if sub is not None else f"{indent}{key}: null\n"
    filler = f"{indent}# between the two\n" * draw(st.integers(0, 2))
    return head + body + filler + body, key


@st.composite
def non_utf8_yaml(draw, text: str) -> bytes:
    """``text`` (a valid config) with a byte that is not UTF-8 (a lone continuation byte, or a lead byte followed by
    ASCII) in a comment or a quoted value, as latin-1 or cp1252 editors save accents."""
    lines = text.splitlines(keepends=True)
    at_line = draw(st.integers(0, len(lines)))
    bad = bytes([draw(st.integers(0x80, 0xFF))]) + b"x"
    where = draw(st.sampled_from(["comment", "value"]))
    line = b"# caf" + bad + b"\n" if where == "comment" else b"name: 'caf" + bad + b"'\n"
    encoded = [ln.encode() for ln in lines if not (where == "value" and ln.startswith("name:"))]
    return b"".join(encoded[:at_line] + [line] + encoded[at_line:])


# --- npz datasets ---

@dataclass
class Dataset:
    arrays: dict[str, np.ndarray]
    defects: list[str] = field(default_factory=list)
    raw: bytes | None = None  # the file is these bytes, not an npz


def _digits(rows_train: int = 60, rows_test: int = 30) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:, None] / 16).astype(np.float32)
    y = digits.target.astype(np.int64)
    return {"x_train": x[:rows_train], "y_train": y[:rows_train],
            "x_test": x[rows_train:rows_train + rows_test], "y_test": y[rows_train:rows_train + rows_test]}


def _defect(name):
    def register(fn):
        DEFECTS[name] = fn
        return fn
    return register


DEFECTS: dict = {}
SPLITS = st.sampled_from(["train", "test"])


@_defect("input dtype")
def _(draw, a):
    s = draw(SPLITS)
    dtype = draw(st.sampled_from(["int16", "int32", "int64", "complex64", "complex128", "<U4"]))
    a[f"x_{s}"] = (a[f"x_{s}"] * 16).astype(dtype)
    return f"x_{s} as {dtype}"


@_defect("label dtype")
def _(draw, a):
    s = draw(SPLITS)
    kind = draw(st.sampled_from(["complex64", "<U2", "fractional", "nan"]))
    y = a[f"y_{s}"]
    if y.ndim != 1 or not len(y) or y.dtype.kind not in "iuf":
        return None
    if kind == "fractional":
        y = y.astype(np.float64)
        y[draw(st.integers(0, len(y) - 1))] += draw(st.sampled_from([0.5, 0.25, 0.999]))
    elif kind == "nan":
        y = y.astype(np.float32)
        y[draw(st.integers(0, len(y) - 1))] = np.nan
    else:
        y = y.astype(kind)
    a[f"y_{s}"] = y
    return f"y_{s} {kind}"


@_defect("object array")
def _(draw, a):
    key = draw(st.sampled_from(["x_train", "y_train", "x_test", "y_test"]))
    if np.ndim(a[key]) == 0:
        return None
    ragged = np.empty(len(a[key]), dtype=object)
    ragged[:] = list(a[key])
    a[key] = ragged
    return f"{key} object"


@_defect("ndim")
def _(draw, a):
    s, target = draw(SPLITS), draw(st.sampled_from(["x flat", "x scalar", "y column", "y one-hot"]))
    if target == "x flat":
        a[f"x_{s}"] = a[f"x_{s}"].reshape(-1)
    elif target == "x scalar":
        a[f"x_{s}"] = np.float32(1.0)
    elif target == "y column":
        a[f"y_{s}"] = a[f"y_{s}"][:, None]
    else:
        a[f"y_{s}"] = np.eye(10, dtype=np.int64)[a[f"y_{s}"]]
    return f"{target} in {s}"


@_defect("lengths")
def _(draw, a):
    s, cut = draw(SPLITS), draw(st.integers(1, 5))
    key = draw(st.sampled_from([f"x_{s}", f"y_{s}"]))
    if np.ndim(a[key]) == 0 or len(a[key]) <= cut:
        return None
    a[key] = a[key][:-cut]
    return f"{key} {cut} short"


@_defect("empty split")
def _(draw, a):
    s = draw(SPLITS)
    a[f"x_{s}"], a[f"y_{s}"] = a[f"x_{s}"][:0], a[f"y_{s}"][:0]
    return f"empty {s}"


@_defect("non-finite")
def _(draw, a):
    s = draw(SPLITS)
    x = a[f"x_{s}"].copy()
    if x.dtype.kind != "f" or not x.size:
        return None
    x.reshape(-1)[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    a[f"x_{s}"] = x
    return f"non-finite x_{s}"


@_defect("label range")
def _(draw, a):
    s = draw(SPLITS)
    value = draw(st.sampled_from([-1, -7, 10, 11, 255]) if s == "test" else st.sampled_from([-1, -3]))
    y = a[f"y_{s}"].copy()
    if y.ndim != 1 or not len(y) or y.dtype.kind not in "iuf":
        return None
    y[draw(st.integers(0, len(y) - 1))] = value
    a[f"y_{s}"] = y
    return f"y_{s} holds {value}"


@_defect("missing array")
def _(draw, a):
    key = draw(st.sampled_from(["x_train", "y_train", "x_test", "y_test"]))
    del a[key]
    return f"no {key}"


@_defect("shapes differ")
def _(draw, a):
    if np.ndim(a["x_test"]) != 4:
        return None
    a["x_test"] = np.pad(a["x_test"], ((0, 0), (0, 0), (0, 0), (0, draw(st.integers(1, 3)))))
    return "x_test wider than x_train"


@st.composite
def bad_dataset(draw) -> Dataset:
    """One to three defects; an image dtype that is itself fine (uint8 x, bool y) may ride along."""
    if draw(st.integers(0, 15)) == 0:
        raw = draw(st.sampled_from([b"", b"PK\x03\x04broken", b"not an npz at all\n", bytes(range(256))]))
        return Dataset({}, [f"not an npz ({len(raw)} bytes)"], raw=raw)
    arrays = _digits()
    if draw(st.booleans()):
        arrays["x_train"], arrays["x_test"] = ((arrays[k] * 255).astype(np.uint8) for k in ("x_train", "x_test"))
    names = draw(st.lists(st.sampled_from(sorted(DEFECTS)), min_size=1, max_size=3, unique=True))
    defects = []
    for name in names:  # a defect that does not apply after an earlier one (no such array left) is skipped
        if all(key in arrays for key in ("x_train", "y_train", "x_test", "y_test")) or name != "missing array":
            try:
                applied = DEFECTS[name](draw, arrays)
            except KeyError:
                applied = None
            if applied:
                defects.append(applied)
    if not defects:
        defects.append(DEFECTS["missing array"](draw, arrays))
    return Dataset(arrays, defects)


# --- damaged run folders ---

JSON_DAMAGE = ("truncate", "delete", "empty", "not utf-8", "wrong shape")
BINARY_DAMAGE = ("truncate", "delete", "empty", "flip", "garbage")


def damage_file(path, kind: str, draw) -> None:
    data = path.read_bytes()
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flip":
        i = draw(st.integers(0, len(data) - 1))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif kind == "garbage":
        path.write_bytes(draw(st.binary(min_size=1, max_size=64)) + b"\xff\xfe")
    elif kind == "not utf-8":
        i = draw(st.integers(0, len(data)))
        path.write_bytes(data[:i] + b"\xe9\xff" + data[i:])
    elif kind == "wrong shape":
        path.write_text(draw(st.sampled_from(["[]", "{}", "null", '{"fingerprint": 3}', '"result"', "3"])))
    else:
        raise ValueError(kind)
