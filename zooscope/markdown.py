"""Text from a zoo (names, factor values, descriptions, paths, the config) put into
Markdown, YAML or Python code as data: escaped for the place it goes, so that it can
neither add markup, links, HTML or YAML keys, nor leave a table, a code span or a
code block."""

from __future__ import annotations

import json
import re

#: ASCII punctuation that starts or ends Markdown or math markup inside a line (an
#: underscore inside a word starts nothing); each shows as itself when escaped with a
#: backslash, as CommonMark allows for all punctuation. HTML's three characters become
#: entities, which every Markdown renders as the characters.
_MARKUP = re.compile(r"([\\`*\[\]|#!~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_NEWLINES = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def text(value: object) -> str:
    """Inline text: every markup character escaped, line breaks made spaces."""
    plain = _CONTROL.sub("", _NEWLINES.sub(" ", str(value)))
    escaped = _MARKUP.sub(r"\\\1", plain)
    return re.sub(r"[&<>]", lambda m: _ENTITIES[m.group()], escaped)


def paragraphs(value: object) -> str:
    """Prose of several lines: each line escaped as ``text``, line breaks kept."""
    lines = _NEWLINES.sub("\n", str(value).replace("\r\n", "\n")).split("\n")
    return "\n".join(text(line) for line in lines)


def code(value: object) -> str:
    """An inline code span holding ``value`` verbatim on one line."""
    plain = _CONTROL.sub("", _NEWLINES.sub(" ", str(value)))
    longest = max((len(run) for run in re.findall(r"`+", plain)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if plain.startswith("`") or plain.endswith("`") or not plain.strip() else ""
    return f"{fence}{pad}{plain}{pad}{fence}"


def fence(body: str, info: str = "") -> list[str]:
    """A fenced code block holding ``body`` verbatim: its fence is longer than any run of
    backticks or tildes in it, so no line of the body can close it."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    marks = "`" * max(3, longest + 1)
    return [marks + info, *body.rstrip("\n").split("\n"), marks]


def yaml_scalar(value: object) -> str:
    """A YAML scalar that is exactly ``value`` as text: a JSON string, which YAML reads
    as a double-quoted scalar (newlines and quotes escaped inside it)."""
    return json.dumps(str(value), ensure_ascii=True)


__all__ = ["code", "fence", "paragraphs", "text", "yaml_scalar"]
