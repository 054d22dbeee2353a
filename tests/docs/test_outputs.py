"""The printed outputs on the pages are generated (docs/outputs.py), not typed: every marked
block names an output the script makes, and the ones cheap enough to rerun here are what a
fresh run prints, within the tolerance each states."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.docs.snippets import ROOT


def _outputs():
    spec = importlib.util.spec_from_file_location("docs_outputs", ROOT / "docs" / "outputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


outputs = _outputs()


def test_every_marker_names_an_output_and_every_output_has_its_marker():
    marked = {(m.group("name"), str(page.relative_to(ROOT)))
              for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
              for m in outputs.MARKER.finditer(page.read_text())}
    assert marked == {(o.name, o.page) for o in outputs.OUTPUTS}


def test_generated_blocks_name_the_torch_version_that_printed_them():
    for output in outputs.OUTPUTS:
        assert "torch " in outputs.documented(output), output.name


def test_differences_compare_words_exactly_and_numbers_to_the_tolerance():
    out = outputs.Output("x", "p", [], rtol=0.1)
    page = "```text\nλ₁ = 7.089, ratio 1.063, in 5.5 s\n```\n"
    assert outputs.differences(out, page, "λ₁ = 7.393, ratio 1.109, in 9.1 s") == []
    assert outputs.differences(out, page, "λ₁ = 8.000, ratio 1.063, in 5.5 s")   # 12% off
    assert outputs.differences(out, page, "λ₂ = 7.089, ratio 1.063, in 5.5 s")   # a word


@pytest.mark.parametrize("name", [o.name for o in outputs.OUTPUTS if o.cheap])
def test_cheap_outputs_are_what_a_fresh_run_prints(name, tmp_path):
    output = outputs.BY_NAME[name]
    fresh = outputs.generate(output, outputs.scratch(tmp_path), {}, set())
    found = outputs.differences(output, outputs.documented(output), fresh)
    assert not found, "\n".join(found)
