"""Griffe extension for the API reference: sharpcli's docstrings are plain text with `code`
spans, not Markdown. Outside code spans and indented code blocks, "<run>" would vanish as an
HTML tag and "[h; 1][h; 1]ᵀ" would read as a link, so `<` and `[` are escaped there. The
docs pages they cite as paths ("docs/guides/flow.md#flags", readable in `help()`) become
links to the page, named by its heading (mkdocs --strict then checks that they exist)."""

from __future__ import annotations

import re
from pathlib import Path

import griffe

_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_DOCS_PATH = re.compile(r"docs/((?:[\w-]+/)*[\w-]+\.md)(?:#([\w-]+))?")
_DOCS = Path(__file__).resolve().parent


def _escape(text: str) -> str:
    return _DOCS_PATH.sub(_link, text.replace("<", "&lt;").replace("[", "\\["))


def _link(match: re.Match) -> str:
    """`docs/guides/flow.md#flags` as a link from the API page, named by its heading."""
    page, anchor = match.group(1), match.group(2)
    target = f"../{page}"  # from reference/api.md up to the docs' root
    if anchor:
        target += "#" + anchor
    return f"[{_title(page, anchor)}]({target})"


def _title(page: str, anchor: str | None) -> str:
    """The page's title, and the heading of `anchor` on it (`Central flows › Flags`); the
    path itself when the page has no such heading (the strict build then reports it)."""
    try:
        text = (_DOCS / page).read_text()
    except OSError:
        return page
    title = re.search(r"^# (.+)$", text, re.MULTILINE)
    title = title.group(1).replace("`", "").strip() if title else page
    if not anchor:
        return title
    heading = re.search(r"^#+ (.+?)\s*\{#" + re.escape(anchor) + r"\}", text, re.MULTILINE)
    return f"{title} › {heading.group(1).replace('`', '')}" if heading else page

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
