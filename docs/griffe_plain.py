"""Griffe extension for the API reference: sharpcli's docstrings are plain text with `code`
spans, not Markdown. Outside code spans and indented code blocks, "<run>" would vanish as an
HTML tag and "[h; 1][h; 1]ᵀ" would read as a link, so `<` and `[` are escaped there."""

from __future__ import annotations

import re

import griffe

_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace("[", "\\[")


def _escape_line(line: str) -> str:
    out, last = [], 0
    for span in _CODE_SPAN.finditer(line):
        out += [_escape(line[last:span.start()]), span.group(0)]
        last = span.end()
    return "".join(out + [_escape(line[last:])])


def plain(docstring: str) -> str:
    """The docstring with `<` and `[` escaped outside code spans and indented code blocks (a
    line indented by 4 or more after a blank line, and the lines that follow it)."""
    lines, in_code, previous_blank = [], False, True
    for line in docstring.splitlines():
        blank = not line.strip()
        indented = line.startswith("    ")
        in_code = indented and (in_code or previous_blank) or (in_code and blank)
        lines.append(line if in_code or blank else _escape_line(line))
        previous_blank = blank
    return "\n".join(lines)


class PlainDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
