"""Every figure of the docs has a command: docs/figures.sh lists exactly the files of
docs/figures/, each drawn by an example script that exists, and every image the README and
the docs show is one of them; the README's links resolve."""

import re
import subprocess

from tests.docs.cli_flags import ROOT


def test_figures_script_covers_every_figure():
    listing = subprocess.run(["bash", str(ROOT / "docs" / "figures.sh"), "--list"],
                             capture_output=True, text=True, check=True).stdout
    rows = [[cell.strip() for cell in line.split("|")] for line in listing.splitlines()]
    assert {f"{name}.png" for name, _, _ in rows} == \
        {p.name for p in (ROOT / "docs" / "figures").glob("*.png")}
    assert all((ROOT / "examples" / script).is_file() for _, script, _ in rows)


def test_shown_images_are_the_regenerated_figures():
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert shown and all(path.startswith("docs/figures/") and (ROOT / path).is_file()
                         for path in shown)
    for page in (ROOT / "docs").rglob("*.md"):
        for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / path).resolve().parent == ROOT / "docs" / "figures", (page, path)


def test_readme_links_resolve():
    """The README's relative links (to docs pages, figures, scripts) name files that exist."""
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    local = [link.split("#")[0] for link in links if "://" not in link and link.split("#")[0]]
    assert local and not [link for link in local if not (ROOT / link).exists()]


def test_readme_is_a_landing_page():
    """At most 150 lines, with no placeholder left for a section still to be written."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"\b(TODO|TBD|FIXME|[A-Z]{4,}_[A-Z_]{4,})\b", text)
