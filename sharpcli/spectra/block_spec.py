"""The syntax of `--blocks` (docs/guides/large-models.md#blocks), read without torch so that
a typo fails before the model is loaded.

A spec is items separated by commas; an item is

    gpt2                     the preset for GPT-2-style models (spectra.blocks.gpt2_groups)
    [NAME=]PATTERN[:qkv]     parameters whose name contains PATTERN

PATTERN is a substring of parameter names, or `re:REGEX` for a Python regular expression
searched in them (commas cannot be written inside one: they separate items). Without NAME
the matching parameters are grouped by their name cut after the dotted component where the
match ends, so "attn.c_attn" gives one group per layer, "transformer.h.0.attn.c_attn"; with
NAME every matching parameter is pooled into one group NAME. `:qkv` splits each group's
parameters, fused query-key-value projections, into three equal parts along their output
features: groups <group>.query, <group>.key and <group>.value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sharpcli.errors import SharpError

PRESETS = ("gpt2",)
RESERVED = "all"  # the whole network's block
_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)=(.*)$")


@dataclass(frozen=True)
class Item:
    """One item of a spec: a preset, or a pattern with its group name and split."""

    text: str                 # as written, for messages
    preset: str | None = None
    pattern: re.Pattern | None = None
    name: str | None = None   # pool every match into this group
    qkv: bool = False         # split each group in three along the output features


def parse_blocks(spec: str) -> list[Item]:
    """The items of a spec, or a SharpError naming the argument `blocks` and the item at fault."""
    if not isinstance(spec, str) or not spec.strip():
        raise SharpError(f"{{blocks}} needs patterns of parameter names or a preset "
                         f"({', '.join(PRESETS)}), got {spec!r}", param="blocks")
    items = []
    for text in (part.strip() for part in spec.split(",")):
        if not text:
            raise SharpError(f"{{blocks}} {spec!r}: an empty item between commas", param="blocks")
        items.append(_item(text))
    return items


def _item(text: str) -> Item:
    if text in PRESETS:
        return Item(text, preset=text)
    body, name = text, None
    named = _NAME.match(body)
    if named:
        name, body = named.group(1), named.group(2)
        if name == RESERVED:
            raise SharpError(f"{{blocks}} {text!r}: the group name {RESERVED!r} is the whole "
                             "network's", param="blocks")
    qkv = body.endswith(":qkv")
    if qkv:
        body = body[:-len(":qkv")]
    if body.startswith("re:"):
        try:
            pattern = re.compile(body[3:])
        except re.error as err:
            raise SharpError(f"{{blocks}} {text!r} is not a regular expression: {err}",
                             param="blocks") from None
    else:
        pattern = re.compile(re.escape(body))
    if not pattern.pattern:
        raise SharpError(f"{{blocks}} {text!r}: an empty pattern", param="blocks")
    return Item(text, pattern=pattern, name=name, qkv=qkv)
