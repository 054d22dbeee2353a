"""Every ```python block of the README and docs/ runs as written (tests/docs/snippets.py
lists the few that do not, each with its reason): the blocks of a page in order, in one
namespace as a reader would paste them, in a folder holding the runs the page's `sharp
train` lines would have made (small ones, under the same names). A number a block's print
line shows in its comment is what it prints, to the stated tolerance."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import warnings

import pytest

from tests.docs.snippets import EXCLUDED, ROOT, RUNS, blocks, pages, train_argv
from tests.runners import sharp

RUNNABLE = {str(p.relative_to(ROOT)): [b for b in blocks(p) if not b.excluded] for p in pages()}
RUNNABLE = {page: found for page, found in RUNNABLE.items() if found}
NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")
# printed digits shown in a comment agree to this relative tolerance: the last digit shown
# may move with the torch version and the CPU's summation order
PRINTED_RTOL = 1e-3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("snippets")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in RUNS:
            sharp(*train_argv(name)).ok()
    return root


def test_the_collection_finds_every_block_and_excludes_few():
    found = [b for p in pages() for b in blocks(p)]
    assert len(found) >= 13 and sum(b.excluded is not None for b in found) == len(EXCLUDED)
    assert sum(len(v) for v in RUNNABLE.values()) >= 9


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_the_blocks_of_a_page_run_as_written(page, workdir, tmp_path, monkeypatch, capfd):
    import matplotlib

    matplotlib.use("Agg")  # the pages' .plot() calls draw off screen
    shutil.copytree(workdir, tmp_path / "clone")  # each page from the same runs
    monkeypatch.chdir(tmp_path / "clone")
    monkeypatch.syspath_prepend(str(ROOT))  # `from examples...` as from the clone
    namespace = {"__name__": "__main__"}
    for block in RUNNABLE[page]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a library warning is a docs bug
            exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
        _check_printed(block, out.getvalue())
    import matplotlib.pyplot as plt

    plt.close("all")
    # transformers warns through its logger when the config's bos/eos/pad token ids lie
    # outside a tiny vocabulary (GPT-2's 50256 by default): the examples set them inside
    err = capfd.readouterr().err
    assert "within the vocabulary" not in err, err


def _check_printed(block, printed: str) -> None:
    """A print line's comment that shows numbers (`print(x)   # [6.4153, 5.8148]`) shows
    what it prints."""
    lines = [line for line in block.code.splitlines() if line.startswith("print(") and "#" in line]
    shown = [float(v) for line in lines for v in NUMBER.findall(line.split("#", 1)[1])]
    if not shown:
        return
    got = [float(v) for v in NUMBER.findall(printed)]
    assert got == pytest.approx(shown, rel=PRINTED_RTOL), (block.page, block.line, printed)


@pytest.mark.parametrize("script, first", [
    ("examples/lightning_callback.py", "import lightning as L"),
    ("examples/hf_callback.py", "import torch"),
])
def test_trainer_blocks_are_their_scripts(script, first):
    """The two trainer programs of the callbacks guide are not run here (see EXCLUDED), but
    every line of each is its script's, so they cannot drift from the code that is run."""
    block = next(b for b in blocks(ROOT / "docs" / "guides" / "callbacks.md")
                 if b.first_line == first)
    script_lines = {_code(line) for line in (ROOT / script).read_text().splitlines()}
    own = [line for line in block.code.splitlines()
           if line.strip() and not line.startswith("from examples.")]
    missing = [line for line in own if _code(line) not in script_lines]
    assert not missing, f"lines of the callbacks guide not in {script}: {missing}"


def _code(line: str) -> str:
    """A line without its indentation and its comment (these blocks have no # in strings)."""
    return line.split("#", 1)[0].strip()
