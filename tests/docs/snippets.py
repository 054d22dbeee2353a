"""The ```python blocks of the README and docs/, and the runs the pages' shell commands
would have made before them (small ones, under the same names), shared by the snippet test
and docs/outputs.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# Blocks not run, each with its reason; keyed by page and the block's first line.
EXCLUDED = {
    ("README.md", "from sharpcli.integrations.lightning import SharpnessCallback        # Lightning 2.x"):
        "a summary of the two trainer scripts side by side (L, module, args are theirs); the "
        "complete scripts are the two blocks of docs/guides/callbacks.md",
    ("docs/guides/callbacks.md", "SharpnessCallback(data, loss_fn, run_dir, every=20, **options)"):
        "a signature, not a program",
    ("docs/guides/callbacks.md", "import lightning as L"):
        "examples/lightning_callback.py (1500 steps, about a minute on 2 cores): "
        "test_trainer_blocks_are_their_scripts checks that every line is the script's, and "
        "docs/outputs.py runs the script for the output shown",
    ("docs/guides/callbacks.md", "import torch"):
        "examples/hf_callback.py (300 Trainer steps, about 30 s): checked line by line "
        "against the script as the Lightning one; docs/outputs.py runs it",
    ("docs/guides/large-models.md", "from torch.distributed.fsdp import fully_shard"):
        "runs in every process of a torchrun launch; tests/fsdp_spectra.py makes the same "
        "calls on 2 and 4 processes (tests/hessian/test_fsdp.py)",
    ("docs/guides/large-models.md", "for layer in model:                        # each Linear, then the root"):
        "runs in every process of a torchrun launch: its lines are tests/fsdp_spectra.py's "
        "`train`, run on 2 and 4 processes (test_fsdp.py checks both)",
    ("docs/guides/callbacks.md", "from lightning.pytorch.strategies import ModelParallelStrategy"):
        "a fragment (L, SharpnessCallback and data as in the script above) that runs in every "
        "process of a launch; tests/integrations/lightning_fsdp_fit.py is the whole script, on "
        "2 processes (tests/integrations/test_lightning.py)",
}


@dataclass(frozen=True)
class Block:
    page: str   # relative to the repository
    line: int   # of the opening fence
    code: str

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0]

    @property
    def excluded(self) -> str | None:
        return EXCLUDED.get((self.page, self.first_line))


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(str(page.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in _BLOCK.finditer(text)]


# The runs the pages' `sharp train` lines make, small: the default run (1000 steps, as its
# checkpoint names say) and two of the step-size sweep, on 64 examples of a width-8 MLP.
SMALL = ["--train-size", "64", "--test-size", "32", "--width", "8", "--quiet"]
RUNS = {
    "mnist1d-mlp-gd-lr0.3-seed0": ["--checkpoint-every", "1000"],
    "gd-lr0.1": ["--lr", "0.1", "--steps", "200"],
    "gd-lr0.2": ["--lr", "0.2", "--steps", "200"],
}


def train_argv(name: str) -> list[str]:
    return ["train", *SMALL, "--run-name", name, *RUNS[name]]
