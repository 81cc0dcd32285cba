"""A small declarative schema for ``omerofs.toml``: each key once, with its type, range,
default and one line of documentation. Validation, the commented file ``omerofs init``
writes and docs/config.md are all made from it, so they cannot drift apart.

Why not a library: tomllib (stdlib) already gives typed values; what is left is a
dozen scalar keys with ranges, and messages that name the key and guess the typo.
pydantic or jsonschema would add a dependency (and messages about "loc" paths and
"$ref"s) for that; this is ~150 lines with exactly the messages admins need.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omerofs.errors import UsageError

_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Key:
    name: str
    kind: type  # bool, int, float or str
    default: Any  # None: optional, absent unless set
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive minimum
    choices: tuple[str, ...] = ()
    booleans: bool = False  # a str choice key that also takes true/false (as "true"/"false")
    absolute_path: bool = False
    check: Callable[[Any], None] | None = None  # raises UsageError with a reason
    example: str | None = None  # shown (commented out) for an optional key

    def parse(self, value: Any, where: str) -> Any:
        """``value`` from the file, checked; or UsageError naming the key."""
        fail = f"{where} {self.name}"
        if self.booleans and isinstance(value, bool):
            value = "true" if value else "false"
        ok_type = isinstance(value, self.kind) and not (
            isinstance(value, bool) and self.kind is not bool
        )
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if not ok_type:
            raise UsageError(f"{fail} must be {_KINDS[self.kind]}, not {_toml(value)}")
        if self.kind is float and not math.isfinite(value):
            raise UsageError(f"{fail} must be a finite number, not {value}")
        if self.choices and value not in self.choices:
            raise UsageError(f"{fail} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"{fail} must be >= {_num(self.minimum)}, not {_num(value)}")
        if self.maximum is not None and value > self.maximum:
            raise UsageError(f"{fail} must be <= {_num(self.maximum)}, not {_num(value)}")
        if self.above is not None and value <= self.above:
            raise UsageError(f"{fail} must be > {_num(self.above)}, not {_num(value)}")
        if self.absolute_path and not Path(value).is_absolute():
            raise UsageError(f"{fail} must be an absolute path, not {value!r}")
        if self.check is not None:
            try:
                self.check(value)
            except UsageError as exc:
                raise UsageError(f"{fail}: {exc}") from None
        return value

    def describe(self) -> str:
        """The type and range, for the docs."""
        text = {bool: "boolean", int: "integer", float: "number", str: "string"}[self.kind]
        if self.absolute_path:
            text = "absolute path"
        if self.choices:
            text = " \\| ".join(f"`{c}`" for c in self.choices)
        bounds = []
        if self.above is not None:
            bounds.append(f"> {_num(self.above)}")
        if self.minimum is not None:
            bounds.append(f">= {_num(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"<= {_num(self.maximum)}")
        return text + (f", {', '.join(bounds)}" if bounds else "")


@dataclass(frozen=True)
class Section:
    name: str
    doc: str
    keys: tuple[Key, ...] = ()
    # keys this section also holds that another module parses (it gets the whole table)
    more_keys: Callable[[], Iterable[str]] = lambda: ()
    # the whole section belongs to another module, which validates it: (module, docs)
    delegated: tuple[str, str] | None = None
    key_names: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_names", tuple(k.name for k in self.keys))


def near_miss(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'cache_timeout'?)`` for a typo, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(
    data: dict[str, Any], schema: tuple[Section, ...], path: Path
) -> dict[str, dict[str, Any]]:
    """Every section of the schema as a dict: its keys parsed (defaults filled in), the
    keys other modules parse passed through as they are, delegated sections untouched
    (absent ones as ``{}``). Unknown sections and keys are errors."""
    sections = {s.name: s for s in schema}
    result: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if name not in sections:
            kind = "section" if isinstance(table, dict) else "top-level key"
            hint = near_miss(name, sections)
            raise UsageError(f"{path}: unknown {kind} {name!r}{hint}")
        if not isinstance(table, dict):
            raise UsageError(f"{path}: {name} must be a [{name}] section")
    for section in schema:
        table = data.get(section.name, {})
        if section.delegated is not None:
            result[section.name] = table
            continue
        known = (*section.key_names, *section.more_keys())
        for key in table:
            if key not in known:
                hint = near_miss(key, known)
                raise UsageError(f"{path}: [{section.name}] unknown key {key!r}{hint}")
        where = f"{path}: [{section.name}]"
        parsed = {k: v for k, v in table.items() if k not in section.key_names}
        for key in section.keys:
            if key.name in table:
                parsed[key.name] = key.parse(table[key.name], where)
            else:
                parsed[key.name] = key.default
        result[section.name] = parsed
    return result


def render_toml(schema: tuple[Section, ...], values: dict[str, dict[str, Any]]) -> str:
    """The commented file ``omerofs init`` writes (``values`` override defaults)."""
    lines = ["# omerofs repository configuration (every key: docs/config.md)"]
    for section in schema:
        if section.delegated is not None:
            continue
        lines.append(f"\n[{section.name}]")
        for key in section.keys:
            lines.extend(f"# {line}" for line in key.doc.splitlines())
            value = values.get(section.name, {}).get(key.name, key.default)
            if value is None:
                lines.append(f"# {key.name} = {_toml(key.example)}")
            else:
                lines.append(f"{key.name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def render_markdown(schema: tuple[Section, ...], intro: str) -> str:
    """docs/config.md."""
    out = [intro.rstrip() + "\n"]
    for section in schema:
        out.append(f"\n## [{section.name}]\n\n{section.doc}\n")
        if section.delegated is not None:
            module, docs = section.delegated
            out.append(f"\nValidated by `{module}`; every key is described in {docs}.\n")
            continue
        out.append("\n| key | type | default | what it does |\n| --- | --- | --- | --- |\n")
        for key in section.keys:
            default = "(unset)" if key.default is None else f"`{_toml(key.default)}`"
            doc = " ".join(key.doc.split()).replace("|", "\\|")
            out.append(f"| `{key.name}` | {key.describe()} | {default} | {doc} |\n")
        more = list(section.more_keys())
        if more:
            out.append(
                "\nAlso read here, by the module that uses them (docs/ingest.md): "
                + ", ".join(f"`{k}`" for k in more)
                + ".\n"
            )
    return "".join(out)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return repr(value)
