"""The docs and the command line agree: every option of every `sharp` command is mentioned
in the docs, and every `sharp` command line written in the README, the docs' code blocks
and the examples uses commands and options that exist."""

import re

from sharpcli.formats import schema
from tests.docs.cli_flags import (ROOT, command_options, docs_text, sharp_invocations,
                                  written_command_lines)


def test_every_option_of_every_command_is_in_the_docs():
    text = docs_text()
    missing = [f"sharp {command} {flags[0]}"
               for command, options in command_options().items()
               for flags in options.values()
               if not any(re.search(re.escape(flag) + r"(?![\w-])", text) for flag in flags)]
    assert not missing, f"options the docs never mention: {missing}"


def test_written_command_lines_use_existing_options():
    options = command_options()
    lines = written_command_lines()
    assert len(lines) > 40  # the README, the guides and the examples are all read
    wrong = []
    for where, line in lines:
        for command, tokens in sharp_invocations(line):
            if command not in options:
                wrong.append(f"{where}: no command 'sharp {command}': {line.strip()}")
                continue
            known = {flag for flags in options[command].values() for flag in flags}
            wrong += [f"{where}: sharp {command} has no {token}: {line.strip()}"
                      for token in tokens
                      if token.startswith("--") and token.split("=")[0] not in known]
    assert not wrong, "\n".join(wrong)


def test_the_format_reference_lists_every_file_and_column():
    page = (ROOT / "docs" / "reference" / "formats.md").read_text()
    names = [v for k, v in vars(schema).items() if k.endswith("_FILE")]
    columns = [",".join(v) for k, v in vars(schema).items() if k.endswith("_COLUMNS")]
    missing = [x for x in names + columns if x not in page]
    assert not missing, f"docs/reference/formats.md lacks {missing}"
