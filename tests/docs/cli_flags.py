"""What the `sharp` commands accept, read off the Typer app, and the `sharp` command lines
written in the README, the docs and the examples."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from sharpcli.cli import app

ROOT = Path(__file__).resolve().parents[2]


def command_options() -> dict[str, dict[str, list[str]]]:
    """{command: {parameter name: its long options}}, `--no-x` forms included."""
    group = typer.main.get_command(app)
    return {name: {p.name: [o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
                   for p in command.params if p.param_type_name == "option"}
            for name, command in group.commands.items()}


def docs_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks of a Markdown text."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def logical_lines(text: str) -> list[str]:
    """Lines with their backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def sharp_invocations(line: str) -> list[tuple[str, list[str]]]:
    """(command, tokens after it) of each `sharp COMMAND ...` or `-m sharpcli COMMAND ...` in
    a shell line; comments dropped."""
    found = []
    for match in re.finditer(r"(?:(?<![\w/-])sharp|-m sharpcli)\s+([a-z][\w-]*)(.*?)(?=&&|;|\||$)",
                             line.split(" # ")[0]):
        try:
            tokens = shlex.split(match.group(2), comments=True)
        except ValueError:  # an unbalanced quote in prose-like text: keep the plain words
            tokens = match.group(2).split()
        found.append((match.group(1), tokens))
    return found


def written_command_lines() -> list[tuple[str, str]]:
    """(where, line) of every shell line that runs `sharp` in the README's and the docs'
    code blocks and in the examples' scripts."""
    lines = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in code_blocks(path.read_text()):
            lines += [(path.name, line) for line in logical_lines(block)]
    for path in sorted((ROOT / "examples").glob("*.sh")):
        lines += [(path.name, line) for line in logical_lines(path.read_text())
                  if not line.lstrip().startswith("#")]
    return [(where, line) for where, line in lines if sharp_invocations(line)]
