"""The configuration reference (key, type, default, allowed values, description), rendered from the
schema's declarations, so that the README states what they say and nothing else. The walk starts
at schema.py's AgentConfig and follows its fields into the other tables' modules, so the order
is the fields' order (the order a file is written), whichever module declares a table.

Its command line (`edge-agent config-reference` is the same command, hidden from the help):

    python -m edge_agent.config.reference                     print the reference
    python -m edge_agent.config.reference --update README.md  rewrite the README's generated block
    python -m edge_agent.config.reference --check README.md   exit 1 when that block differs from the schema

(A bare file name, `python -m edge_agent.config.reference README.md`, is the older spelling of
--update.) tests/test_config_reference.py fails while the README differs from the schema.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

from edge_agent.config.parser import field_default, optional_type, type_hints
from edge_agent.config.schema import AgentConfig
from edge_agent.config.setting import Setting, setting_of
from edge_agent.errors import InputError

BEGIN = ("<!-- generated from edge_agent/config/ (schema.py and its table modules) by "
         "`edge-agent config-reference --update README.md`: "
         "change the schema, not these tables -->")
END = "<!-- end of the generated configuration reference -->"


def render_reference() -> str:
    """The reference as Markdown: one table per TOML table, in the order a file is written."""
    sections: list[str] = []
    queue: list[tuple[str, str, type]] = [("", "The top level", AgentConfig)]
    while queue:
        path, title, cls = queue.pop(0)
        rows, nested = _rows(cls, path)
        queue[0:0] = nested  # a table's sub-tables follow it
        sections.append(_table(title, rows))
    return "\n".join(sections)


def _rows(cls: type, path: str) -> tuple[list[tuple[str, ...]], list[tuple[str, str, type]]]:
    rows: list[tuple[str, ...]] = []
    nested: list[tuple[str, str, type]] = []
    hints = type_hints(cls)
    for f in fields(cls):
        s = setting_of(f)
        if s is None or not s.is_key:
            continue
        key = f"{path}.{f.name}" if path else f.name
        hint = hints[f.name]
        if s.custom is not None:
            rows.append((key, s.custom.type_text, _default(s, field_default(f), hint), s.custom.allowed_text, s.doc))
            for sibling, (sibling_type, sibling_setting) in s.custom.siblings.items():
                sibling_key = f"{path}.{sibling}" if path else sibling
                rows.append((sibling_key, _type(sibling_setting, sibling_type), _default(sibling_setting, "", sibling_type),
                             _allowed(sibling_setting, sibling_type), sibling_setting.doc))
            for name, table in s.custom.tables.items():
                title = getattr(s.custom, "table_titles", {}).get(name, f"{s.doc} (the table form)")
                nested.append((f"{path}.{name}", f"`[{path}.{name}]`: {title}", table))
            continue
        inner = optional_type(hint)
        if inner is not None and is_dataclass(inner):
            nested.append((key, f"`[{key}]`: {s.doc} (optional; default: {s.default_text or 'absent'})", inner))
        elif is_dataclass(hint):
            nested.append((key, f"`[{key}]`: {s.doc}", hint))
        elif typing.get_origin(hint) is tuple and is_dataclass(typing.get_args(hint)[0]):
            item = s.item_name
            nested.append((f"{key}.{item}", f"`[{key}.{item}]`: {s.doc}", typing.get_args(hint)[0]))
        else:
            rows.append((key, _type(s, hint), _default(s, field_default(f), hint), _allowed(s, hint), s.doc))
    return rows, nested


def _type(s: Setting, hint: Any) -> str:
    if s.key_type:
        return s.key_type
    hint = optional_type(hint) or hint
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return "list of numbers" if item is float else ("list of paths" if s.path else "list of strings")
    if typing.get_origin(hint) is dict:
        return "table"
    if hint is str and s.path is True:
        return "path"
    return {bool: "bool", int: "integer", float: "number", str: "string"}[hint]


def _default(s: Setting, default: Any, hint: Any) -> str:
    if s.default_text:
        return s.default_text
    if default is MISSING:
        return "**required**"
    return _toml(default)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if value is None:
        return "none"
    return repr(value)


def _allowed(s: Setting, hint: Any) -> str:
    if s.allowed:
        return s.allowed
    hint = optional_type(hint) or hint
    if s.choices:
        return ", ".join(_toml(c) for c in s.choices)
    item = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
    if item in (int, float):
        upper = s.maximum if s.maximum is not None else s.cap
        lower = f"0, or {s.smallest}" if s.smallest is not None else f"{s.minimum}"
        text = f"{lower} to {upper}" if upper is not None else f">= {lower}"
        return text + (f"; {s.expected.removeprefix('a list of ')}" if s.expected else "")
    if s.expected:
        return s.expected.removeprefix("a ")
    return ""


def _table(title: str, rows: list[tuple[str, ...]]) -> str:
    lines = [f"**{title}**", "", "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for key, *cells in rows:
        lines.append("| " + " | ".join([f"`{key}`", *(_cell(c) for c in cells)]) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def update_readme(path: Path) -> bool:
    """Rewrite the generated block in `path`; True when it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n\n" + render_reference() + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def readme_reference(text: str) -> str:
    """The generated block of a README's text (what render_reference() gave when it was updated)."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


class ReferenceFileError(InputError):
    """The file to update or check cannot be read or has no generated block."""


def _read_block_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReferenceFileError(f"{path} cannot be read: {err}") from None
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ReferenceFileError(f"{path} has no generated configuration reference: it needs the lines\n{BEGIN}\n{END}\n"
                                 "(in that order) where the tables go")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--update FILE | --check FILE (the CLI's hidden `config-reference` command takes the same)."""
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--update", type=Path, metavar="README.md",
                        help="rewrite the generated block in this file instead of printing the reference")
    action.add_argument("--check", type=Path, metavar="README.md",
                        help="exit 1 (naming the fix) when this file's generated block differs from the schema")


def run(update: Path | None = None, check: Path | None = None) -> int:
    """Print, update or check; the exit status (2: the file is missing or has no block)."""
    try:
        if update is not None:
            _read_block_file(update)
            print(f"{update}: {'updated' if update_readme(update) else 'already up to date'}")
        elif check is not None:
            if readme_reference(_read_block_file(check)) != render_reference():
                print(f"{check}: the configuration reference differs from edge_agent/config/ (schema.py and its table modules): run "
                      f"`python -m edge_agent.config.reference --update {check}`", file=sys.stderr)
                return 1
            print(f"{check}: the configuration reference matches the schema")
        else:
            print(render_reference(), end="")
    except ReferenceFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.config.reference",
                                     description="The configuration reference, rendered from edge_agent/config/ (schema.py and its table modules).")
    add_arguments(parser)
    parser.add_argument("file", nargs="?", type=Path, metavar="FILE", help="the older spelling of --update FILE")
    args = parser.parse_args(argv)
    if args.file is not None and (args.update or args.check):
        parser.error("give the file once: --update FILE or --check FILE")
    return run(args.update or args.file, args.check)


if __name__ == "__main__":
    sys.exit(main())
