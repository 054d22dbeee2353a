"""mkdocs hook: every object the API reference renders (`::: dotted.path`) must import.

mkdocstrings reads the source without importing it, so a module whose import fails (a
missing dependency, an error at import time) would still render; here it fails the build."""

from __future__ import annotations

import importlib
import re

from mkdocs.exceptions import PluginError

_OBJECT = re.compile(r"^:::\s+([\w.]+)", re.MULTILINE)


def import_object(path: str):
    """The object named by a dotted path: the longest importable module prefix, then
    attributes. A module that exists but fails to import raises its own error."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # the module exists; something it imports does not
                raise
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no module in {path!r}")


def on_page_markdown(markdown: str, page, **_):
    for path in _OBJECT.findall(markdown):
        try:
            import_object(path)
        except Exception as err:  # noqa: BLE001 - any failure to import fails the build
            raise PluginError(f"{page.file.src_path}: '::: {path}' does not import: "
                              f"{type(err).__name__}: {err}") from err
    return markdown

