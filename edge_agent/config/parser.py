"""One generic reader for the schema: walks a dataclass's fields, reads each key by its type hint
and its Setting, and records every problem by key path (nothing is raised until the end).

No I/O but reading the file itself: paths are only joined to the config file's folder.
"""

from __future__ import annotations

import copy
import functools
import tomllib
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

from edge_agent.config.schema import AgentConfig
from edge_agent.config.setting import Setting, setting_of
from edge_agent.errors import InputError

UNKNOWN_KEY = "unknown key (check its spelling in the README's configuration reference)"


class ConfigError(InputError, ValueError):
    """The configuration is invalid; `problems` lists each one with its key path."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; raise ConfigError naming every problem."""
    path = Path(path)
    return parse_config(read_toml(path), base_dir=path.parent, source=str(path))


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as a dict (what parse_config takes); ConfigError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path} does not exist: pass --config PATH or create it"], str(path)) from None
    except OSError as err:
        raise ConfigError([f"{path} cannot be read: {err.strerror}"], str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8"], str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"not valid TOML: {err}"], str(path)) from None


def parse_config(data: dict[str, Any], base_dir: Path = Path("."), source: str = "configuration") -> AgentConfig:
    """Validate a config dictionary (as read from TOML)."""
    errors: list[str] = []
    reader = TableReader(data, "", errors, base_dir)
    config = reader.read_dataclass(AgentConfig, source_toml=copy.deepcopy(data), base_dir=str(base_dir))
    if errors:
        raise ConfigError(errors, source)
    return config


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def optional_type(hint: Any) -> Any | None:
    """X for `X | None`, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_kind(hint: Any) -> str:
    return "a whole number" if hint is int else "a number"


class TableReader:
    """A TOML table being read: errors recorded by key path, keys seen tracked for unknown-key checks."""

    def __init__(self, data: Any, path: str, errors: list[str], base_dir: Path, name: str = ""):
        self.path = path
        self.name = name  # the table's own key (a pipeline's name)
        self.errors = errors
        self.base_dir = base_dir
        if not isinstance(data, dict):
            errors.append(f"{path or 'top level'}: expected a table")
            data = {}
        self.data = data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path and name else (name or self.path)

    def error(self, name: str, problem: str) -> None:
        self.errors.append(f"{self.key(name)}: {problem}")

    def consume(self, name: str) -> None:
        self._seen.add(name)

    def sub(self, name: str) -> TableReader:
        self._seen.add(name)
        return TableReader(self.data.get(name, {}), self.key(name), self.errors, self.base_dir, name)

    def resolve(self, value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.base_dir / path)

    def reject_unknown(self) -> None:
        for name in self.data:
            if name not in self._seen:
                self.error(name, UNKNOWN_KEY)

    # -------------------------------------------------------------------- the generic walk

    def read_dataclass(self, cls: type, **fixed: Any) -> Any:
        """An instance of `cls` from this table: each field read by its Setting and type hint."""
        values: dict[str, Any] = {}
        hints = type_hints(cls)
        for f in fields(cls):
            s = setting_of(f)
            if s is None or f.name in fixed:
                continue  # not a key: set by the code that reads this table
            if s.derive is not None:
                values[f.name] = value = s.derive(self, values)
                problem = s.check(value) if s.check else None
                if problem:
                    self.error("", problem)
            elif s.custom is not None:
                values[f.name] = s.custom.read(self, f.name)
            else:
                default = s.default_from(values) if s.default_from else field_default(f)
                values[f.name] = self.read_value(f.name, s, hints[f.name], default)
        instance = cls(**values, **fixed)
        for name, problem in getattr(instance, "cross_check", list)():
            self.error(name, problem)
        self.reject_unknown()
        return instance

    def read_value(self, name: str, s: Setting, hint: Any, default: Any) -> Any:
        """One key's value, or its default (after recording the problem) when it is missing or wrong."""
        inner = optional_type(hint)
        if inner is not None and is_dataclass(inner):
            return self.sub(name).read_dataclass(inner) if name in self.data else None
        if is_dataclass(hint):
            return self.sub(name).read_dataclass(hint)
        if typing.get_origin(hint) is tuple and is_dataclass(typing.get_args(hint)[0]):
            return self.read_named_tables(name, typing.get_args(hint)[0], s.optional)
        self._seen.add(name)
        if name not in self.data:
            if default is MISSING:
                self.error(name, f"required ({self._expected(s, inner or hint)})")
                return placeholder(hint)
            return default
        value = self.data[name]
        problem = self._problem(s, inner or hint, value)
        if problem:
            self.error(name, problem)
            return default if default is not MISSING else placeholder(hint)
        value = self._convert(s, inner or hint, value)
        problem = s.check(value) if s.check else None
        if problem:
            self.error(name, problem)
        return value

    def read_named_tables(self, name: str, cls: type, optional: bool = False) -> tuple:
        """`[name.ITEM]` tables, each read as a `cls`; at least one unless `optional`."""
        self._seen.add(name)
        required = f"at least one [{self.key(name)}.NAME] table is required"
        if name not in self.data:
            if not optional:
                self.error(name, required)
            return ()
        table = self.sub(name)
        items = tuple(table.sub(item).read_dataclass(cls) for item in list(table.data))
        if not items and not optional:
            self.error(name, required)
        return items

    def _expected(self, s: Setting, hint: Any, full: bool = False) -> str:
        if s.expected:
            return s.expected
        if hint is bool:
            return "true or false"
        if hint in (int, float):
            return s.expected_number(number_kind(hint), full)
        if s.choices:
            return "one of " + ", ".join(repr(c) for c in s.choices)
        if hint is str:
            return "a string"
        if typing.get_origin(hint) is tuple:
            return "a list of numbers" if typing.get_args(hint)[0] is float else "a list of strings"
        return "a table"

    def _problem(self, s: Setting, hint: Any, value: Any) -> str | None:
        """What is wrong with a value as read from TOML; None when it fits."""
        got = f", got {value!r}"
        if hint is bool:
            return None if isinstance(value, bool) else f"expected true or false{got}"
        if hint in (int, float):
            if not is_number(value) or (hint is int and not isinstance(value, int)):
                return f"expected {self._expected(s, hint)}{got}"
            verdict = s.number_problem(value)
            if verdict is not None:
                return f"expected {self._expected(s, hint, full=verdict == 'range')}{got}"
            return None
        if hint is str:
            if not isinstance(value, str):
                return f"expected a string{got}"
            return None if not s.choices or value in s.choices else f"expected {self._expected(s, hint)}{got}"
        if typing.get_origin(hint) is tuple:
            return self._list_problem(s, typing.get_args(hint)[0], value)
        if typing.get_origin(hint) is dict or hint is dict:
            return None if isinstance(value, dict) else f"expected {self._expected(s, hint)}"
        raise TypeError(f"no reader for {hint!r}")  # a schema mistake, found by the first test

    def _list_problem(self, s: Setting, item_type: Any, value: Any) -> str | None:
        got = f", got {value!r}"
        if not isinstance(value, list):
            return f"expected {self._expected(s, tuple[item_type, ...])}{got}"
        if item_type is float:
            if not all(is_number(v) for v in value):
                return f"expected {self._expected(s, tuple[float, ...])}{got}"
            if any(s.number_problem(v) for v in value):
                return f"expected {s.expected_number(self._expected(s, tuple[float, ...]), full=True)}{got}"
            return None
        accepted = s.item_check or (lambda v: v in s.choices if s.choices else isinstance(v, str))
        return None if all(accepted(v) for v in value) else f"expected {self._expected(s, tuple[str, ...])}{got}"

    def _convert(self, s: Setting, hint: Any, value: Any) -> Any:
        if hint is float:
            return float(value)
        if typing.get_origin(hint) is tuple:
            items = [float(v) for v in value] if typing.get_args(hint)[0] is float else list(value)
            if s.path:
                items = [self.resolve(v) for v in items]
            return tuple(dict.fromkeys(items) if s.unique else items)
        if typing.get_origin(hint) is dict:
            return dict(value)
        if isinstance(value, str) and value and (s.path is True or (callable(s.path) and s.path(value))):
            return self.resolve(value)
        return value


def field_default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def placeholder(hint: Any) -> Any:
    """A stand-in for a required value that is missing or wrong (the parse fails anyway)."""
    return {str: "", int: 0, float: 0.0, bool: False}.get(hint, ())

