"""``lmforge <stage> --help``: every config key with its type, default and description, from the config class.

Descriptions are written once, in the config class, as the comment on a field's line or the comment
lines right above it (litgpt and torchtitan print the same from theirs). Nothing here imports a stage's
code beyond its entry module (its config, and hooks that import their work only when called), starts
Ray or reads an input.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import tokenize
import types
import typing
from typing import Any, Literal, Union

from lmforge.config import key_of, nested_class, ordered_fields

REQUIRED = "required"


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted
    type: str
    default: str
    description: str
    section: str  # the dotted prefix the key lives in ("" at the top)


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field: description}``: ``metadata["help"]``, else the comment on the field's line, else the
    comment lines directly above it, in the class that declares the field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_source_comments(klass))
    docs.update({f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata})
    return docs


def _source_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # a class made at run time has no source
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    docs = {}
    for number, line in enumerate(source.splitlines(), start=1):
        name = line.strip().split(":", 1)[0].strip()
        if name not in names or ":" not in line or name in docs:
            continue
        if number in comments and number in code_lines:  # trailing comment on the field's own line
            docs[name] = comments[number]
            continue
        above, k = [], number - 1
        while k in comments and k not in code_lines:
            above.insert(0, comments[k])
            k -= 1
        if above:
            docs[name] = " ".join(above)
    return docs


def type_name(tp: Any) -> str:
    """A short, readable name for a config field's type hint."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args if a is not type(None)) + " | null"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return REQUIRED
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def key_docs(cls: type, prefix: str = "") -> list[KeyDoc]:
    """One entry per leaf key of ``cls``; nested config classes are expanded under their dotted prefix."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows: list[KeyDoc] = []
    nested_rows: list[KeyDoc] = []
    for f in ordered_fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{key_of(f)}" if prefix else key_of(f)
        nested = nested_class(hints[f.name])
        if nested:
            nested_rows += key_docs(nested, key)
        else:
            rows.append(KeyDoc(key, type_name(hints[f.name]), _default(f), comments.get(f.name, ""), prefix))
    return rows + nested_rows


def render(cls: type, command: str, summary: str) -> str:
    """The whole ``--help`` text of one command."""
    lines = [f"usage: lmforge {command} [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--help]", "",
             summary, ""]
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # dataclasses invent a docstring
        lines += [inspect.cleandoc(cls.__doc__), ""]
    docs = key_docs(cls)
    width = min(36, max(len(d.key) for d in docs) + 2) if docs else 10
    section = None
    for d in docs:
        if d.section != section:
            section = d.section
            lines.append(f"{section or 'keys'}:" if not section else f"\n{section}:")
        head = f"  {d.key:<{width - 2}}  {d.type}"
        default = "(required)" if d.default == REQUIRED else f"= {d.default}"
        lines.append(f"{head}  {default}")
        if d.description:
            lines.append(f"  {'':<{width}}{d.description}")
    lines += ["", "Values are parsed as YAML (a.b=3, inputs=[x.jsonl,y.jsonl]). --dry-run prints the resolved "
              "config as YAML."]
    return "\n".join(lines)
