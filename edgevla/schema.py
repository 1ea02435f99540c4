"""A small typed schema for edgevla's YAML files (hardware targets, build recipes).

Why our own and not jsonschema: the files are small, the rules are few, and what
matters most is the message a user reads when a file is wrong. Every problem is
reported as one line naming where it is, with a dotted path::

    recipe: profile.runs: expected int >= 1, got 'abc'
    recipe: unknown key 'prunning' (did you mean 'prune'? known: policy, prune, quantize, ...)

A schema is a tree of :class:`Field` objects. ``validate(schema, data, where)``
returns a normalized copy (ints stay ints, floats become floats, lists become
lists, missing optional keys take their defaults) or raises
:class:`~edgevla.errors.EdgevlaError`. With ``partial=True`` missing keys are
left out instead of defaulted, which is what a layer of a merge (a target's
recipe, a user's file, CLI overrides) needs: it only says what it changes.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import EdgevlaError

MISSING: Any = object()  # "no default": the key is required


class Invalid(Exception):
    """A validation problem; ``message`` already names the dotted path."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Mismatch(Invalid):
    """The value at ``path`` itself is of the wrong type or out of range."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}" if path else message)


class Field:
    """One value in a schema. Subclasses say what they accept in :meth:`check`."""

    def __init__(self, default: Any = MISSING):
        self.default = default

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, path: str, partial: bool = False) -> Any:
        raise NotImplementedError

    def default_value(self) -> Any:
        return copy.deepcopy(self.default)

    def _expected(self, value: Any, path: str) -> Mismatch:
        return Mismatch(path, f"expected {self.describe()}, got {_show(value)}")


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


class Int(Field):
    def __init__(self, min: int | None = None, max: int | None = None, default: Any = MISSING):
        super().__init__(default)
        self.min, self.max = min, max

    def describe(self) -> str:
        return "int" + _bounds(self.min, self.max)

    def check(self, value: Any, path: str, partial: bool = False) -> int:
        # bool is a subclass of int in Python; `runs: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._expected(value, path)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise self._expected(value, path)
        return int(value)


class Float(Field):
    """A finite real number; ints are accepted (YAML writes ``1`` for ``1.0``)."""

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False, max_open: bool = False, default: Any = MISSING):
        super().__init__(default)
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def describe(self) -> str:
        return "number" + _bounds(self.min, self.max, self.min_open, self.max_open)

    def check(self, value: Any, path: str, partial: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._expected(value, path)
        too_low = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        too_high = self.max is not None and (value >= self.max if self.max_open else value > self.max)
        if too_low or too_high:
            raise self._expected(value, path)
        return float(value)


class Bool(Field):
    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any, path: str, partial: bool = False) -> bool:
        if not isinstance(value, bool):
            raise self._expected(value, path)
        return value


class Str(Field):
    """A non-empty string, optionally matching a regular expression."""

    def __init__(self, pattern: str | None = None, hint: str | None = None, default: Any = MISSING):
        super().__init__(default)
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint

    def describe(self) -> str:
        return f"a string like {self.hint}" if self.hint else "a non-empty string"

    def check(self, value: Any, path: str, partial: bool = False) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self._expected(value, path)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise self._expected(value, path)
        return value


class OneOf(Field):
    """One of a fixed set of values (strings or numbers)."""

    def __init__(self, *choices: Any, default: Any = MISSING):
        super().__init__(default)
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)

    def check(self, value: Any, path: str, partial: bool = False) -> Any:
        # `type(...) is` so that True never passes for 1 and 8.0 never for 8.
        if not any(type(value) is type(c) and value == c for c in self.choices):
            raise self._expected(value, path)
        return value


class Supported(OneOf):
    """A method name where more methods are planned than implemented.

    The message says "not supported yet", so a user who asks for a method the
    toolchain will learn later is not told that the key itself is wrong.
    """

    def check(self, value: Any, path: str, partial: bool = False) -> Any:
        if not isinstance(value, str):
            raise self._expected(value, path)
        if value not in self.choices:
            raise Invalid(f"{path} {value!r} is not supported yet (supported: {', '.join(self.choices)})")
        return value


class Nullable(Field):
    """``inner`` or null (YAML ``null`` / ``~``); the default is null."""

    def __init__(self, inner: Field, default: Any = None):
        super().__init__(default)
        self.inner = inner

    def describe(self) -> str:
        return f"{self.inner.describe()} or null"

    def check(self, value: Any, path: str, partial: bool = False) -> Any:
        if value is None:
            return None
        try:
            return self.inner.check(value, path, partial)
        except Mismatch as problem:
            if problem.path != path:  # a list item or nested key: keep its own message
                raise
            raise self._expected(value, path) from None


class Either(Field):
    """A value any of ``fields`` accepts (the first that does): ``Either(Float(0, 1), OneOf("auto"))``."""

    def __init__(self, *fields: Field, default: Any = MISSING):
        super().__init__(default)
        self.fields = fields

    def describe(self) -> str:
        return " or ".join(f.describe() for f in self.fields)

    def check(self, value: Any, path: str, partial: bool = False) -> Any:
        for field in self.fields:
            try:
                return field.check(value, path, partial)
            except Mismatch as problem:
                if problem.path != path:  # a nested key: keep its own message
                    raise
        raise self._expected(value, path)


class ListOf(Field):
    def __init__(self, item: Field, *, min_len: int = 0, unique: bool = False, default: Any = MISSING):
        super().__init__(default)
        self.item, self.min_len, self.unique = item, min_len, unique

    def describe(self) -> str:
        kind = "a non-empty list" if self.min_len else "a list"
        return f"{kind} of {self.item.describe()}"

    def check(self, value: Any, path: str, partial: bool = False) -> list:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
            raise self._expected(value, path)
        items = [self.item.check(v, f"{path}[{i}]", partial) for i, v in enumerate(value)]
        if self.unique:
            for i, v in enumerate(items):
                if v in items[:i]:
                    raise _at(f"{path}[{i}]", f"{_show(v)} is listed twice")
        return items


class MapOf(Field):
    """A mapping from keys drawn from a fixed set to values of one kind."""

    def __init__(self, keys: OneOf, values: Field, *, min_len: int = 0, default: Any = MISSING):
        super().__init__(default)
        self.keys, self.values, self.min_len = keys, values, min_len

    def describe(self) -> str:
        return f"a mapping of {self.keys.describe()} to {self.values.describe()}"

    def check(self, value: Any, path: str, partial: bool = False) -> dict:
        if not isinstance(value, Mapping) or len(value) < self.min_len:
            raise self._expected(value, path)
        out = {}
        for key, v in value.items():
            if key not in self.keys.choices:
                raise _unknown_key(path, key, [str(k) for k in self.keys.choices])
            out[key] = self.values.check(v, _join(path, key), partial)
        return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key(path: str, key: Any, known: list[str]) -> Invalid:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return _at(path, f"unknown key {_show(key)} ({hint}known: {', '.join(known)})")


class Section(Field):
    """A mapping with named fields; unknown keys are an error (a typo must not pass silently)."""

    def __init__(self, fields: Mapping[str, Field]):
        super().__init__()
        self.fields = dict(fields)

    @property
    def required(self) -> bool:
        return any(f.required for f in self.fields.values())

    def describe(self) -> str:
        return "a mapping"

    def default_value(self) -> dict:
        return self.check({}, "")

    def check(self, value: Any, path: str, partial: bool = False) -> dict:
        if not isinstance(value, Mapping):
            raise self._expected(value, path)
        for key in value:
            if key not in self.fields:
                raise _unknown_key(path, key, list(self.fields))
        out = {}
        for name, field in self.fields.items():
            where = _join(path, name)
            if name in value:
                out[name] = field.check(value[name], where, partial)
            elif partial:
                continue
            elif field.required:
                raise Invalid(f"{where}: missing (expected {field.describe()})")
            else:
                out[name] = field.default_value()
        return out


class Overlay(Field):
    """A layer of ``section`` inside a larger file: only the keys given, each checked.

    A target's default recipe is one: it keeps just what that target changes,
    so the loaded target (and a manifest showing it) says what differs from the
    built-in defaults instead of repeating them.
    """

    def __init__(self, section: Section):
        super().__init__(default={})
        self.section = section

    def describe(self) -> str:
        return self.section.describe()

    def check(self, value: Any, path: str, partial: bool = False) -> dict:
        return self.section.check(value, path, partial=True)


def validate(schema: Field, data: Any, where: str, *, partial: bool = False) -> Any:
    """Check ``data`` against ``schema``; the one-line error starts with ``where``."""
    try:
        return schema.check(data, "", partial)
    except Invalid as problem:
        raise EdgevlaError(f"{where}: {problem.message}") from None


def merge(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``: nested mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (YAML would keep the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) reads `1e-4` as a string because it wants a dot in a float;
# YAML 1.2 and every user reads it as a number. Resolve exponent-only floats too.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text; a syntax error becomes one line naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise EdgevlaError(f"{where}: not valid YAML: {problem}{line}") from None


def read_text(path: str | Path, where: str) -> str:
    """A text file's contents; a missing or unreadable file is a one-line error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgevlaError(f"{where}: file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgevlaError(f"{where}: cannot read {str(path)!r}: {exc}") from None


def read_yaml(path: str | Path, where: str) -> Any:
    """Read and parse a YAML file, with one-line errors."""
    return parse_yaml(read_text(path, where), where)
