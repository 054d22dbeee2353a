"""Regenerate the printed outputs shown in the README and the docs, as docs/figures.sh does
for the figures: each output is the stdout of its commands, run in a scratch folder, and
replaces what the page holds between `<!-- output: NAME -->` and `<!-- /output -->`.

    python docs/outputs.py               every output (about 5 minutes on 2 idle CPU cores,
                                         and about half an hour more for the flows' tables)
    python docs/outputs.py NAME...       some of them
    python docs/outputs.py --list        their names, pages and whether CI reruns them

Outputs past the edge of stability depend on the torch version and the CPU's summation
order in their last digits (GD at the edge amplifies a rounding difference), so each
generated block names the torch version that printed it. tests/docs/test_outputs.py
reruns the `cheap` ones and compares them with the pages within their stated tolerance.
Needs sharpcli importable (pip install -e '.[hf,lightning]'); OMP_NUM_THREADS defaults to 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- output: (?P<name>[a-z0-9-]+) -->\n?)(?P<body>.*?)(\n?<!-- /output -->)",
                    re.DOTALL)
TIMES = r"\d+(?:\.\d+)? s\b"  # durations: never compared


@dataclass
class Output:
    """One printed output: `setup` shell lines run first and not shown, then each shown
    command (`$ display`, run as `shell`, default the same) with the stdout lines `keep`
    selects. `cheap` ones are rerun by the tests, their numbers compared to `rtol`, the
    text matching `volatile` ignored."""

    name: str
    page: str
    commands: list[str | tuple[str, str]]
    setup: list[str] = field(default_factory=list)
    keep: object = None            # callable(command index, lines) -> lines
    cheap: bool = False
    rtol: float = 0.0
    volatile: tuple[str, ...] = (TIMES,)
    inline: object = None          # callable(folder, seconds) -> str: a sentence, not a block
    markdown: bool = False         # stdout is Markdown (a table): shown as such, the
                                   # commands named under it


def rows_only(i, lines):
    """The table's header and rows (the README shows no title or borders)."""
    return [line for line in lines if line.startswith(("┃", "│"))]


def every_other(step_lines: int):
    def keep(i, lines):
        steps = [line for line in lines if line.startswith("step ")]
        rest = [line for line in lines if not line.startswith("step ")]
        return steps[::step_lines] + rest
    return keep


def spectrum_rows(i, lines):
    """The title, the rows of steps 0–300 and 1000, and where the CSV went."""
    out = []
    for line in lines:
        m = re.match(r"\s+(\d+)\s+all\s", line)
        if m and int(m.group(1)) not in (0, 100, 200, 300, 1000):
            if out[-1] != "  ...":
                out.append("  ...")
            continue
        out.append(line)
    return out


def trace_rows(i, lines):
    """The second command shows its row alone."""
    return [line for line in lines if i == 0 or re.match(r"\s+\d+\s+all\s", line)]


def table_only(i, lines):
    """The table, without the files it wrote."""
    return [line for line in lines if not line.startswith("wrote ")]


def without_trainer_summary(i, lines):
    """The Trainer's own closing line ({'train_runtime': ...}) varies run to run."""
    return [line for line in lines if not line.startswith("{'train_runtime'")]


def callbacks_sentence(folder: Path, seconds: dict) -> str:
    """The README's claim about the two trainer examples, from their runs."""
    from sharpcli.analysis.eos import eos_run

    s = eos_run(folder / "reports" / "lightning").summary
    return (f"the Lightning example's 1500 steps and 75 measurements take "
            f"{seconds['callbacks-lightning']:.0f} s of CPU ({s.verdict}, median λ₁/(2/η) "
            f"{s.median_ratio:.3f}), the GPT-2's 300 Trainer steps and 30 measurements "
            f"{seconds['callbacks-hf']:.0f} s, `sharp eos` included")


def flow_sentence(folder: Path, seconds: dict) -> str:
    """The README's claim about the default run's central flow, from output flow-gd's run."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from flow_tables import column  # the flows guide's table, whose numbers these are

    run = folder / "reports" / "flow-lr0.3"
    _, s, distance = column(run, run, 10)
    lam = s.sharpness
    return (f"over steps {s.edge_step}–{s.last_step} its predicted loss is within a median "
            f"{s.loss_gap:.2%} of GD's "
            f"{s.window:g}-step average, its λ₁ at 2/η to {s.sharpness_spread:.1e} (GD's "
            f"{lam['gd'] * s.lr / 2 - 1:.0%} above), its weights a median "
            f"{distance['central'][0]:.3g} from GD's against gradient flow's "
            f"{distance['stable'][0]:.3g}; the flow took {seconds['flow-gd'] / 60:.0f} "
            f"minutes of CPU, one thread")


DEFAULT_RUN = "reports/mnist1d-mlp-gd-lr0.3-seed0"
FLOW_TRAIN = "--eval-every 1 --checkpoint-every 1 --sharpness-every 10"  # the flows guide's
RMSPROP_TRAIN = ("--optimizer rmsprop --lr 0.003 --train-size 200 --test-size 50 --width 16 "
                 "--steps 150 --eval-every 1 --sharpness-every 2 --checkpoint-every 1")
DEFAULT_TRAIN = "sharp train --quiet"  # the default run most pages read
OUTPUTS = [
    # the default run in 6 s: rerun by the tests. Past the edge its last digits move with the
    # torch version (λ₁ 7.089 on torch 2.14, 7.393 on 2.15; 70% and 59% of the measurements
    # in the band): numbers agree to 10%, the share in the band is not compared
    Output("getting-started-train", "docs/getting-started.md", ["sharp train"], cheap=True,
           rtol=0.1, volatile=(TIMES, r"\d+% of the measurements")),
    Output("readme-eos", "README.md", ["sharp eos reports/gd-lr* --strict"], keep=rows_only,
           setup=["for lr in 0.15 0.2 0.3; do sharp train --lr $lr --run-name gd-lr$lr --quiet; done"]),
    Output("training-sweep", "docs/guides/training.md",
           [("sharp eos examples-out/gd-sweep/reports/gd-lr* --strict",
             "sharp eos reports/gd-lr* --strict")], keep=table_only,
           setup=["for lr in 0.15 0.2 0.3; do sharp train --lr $lr --run-name gd-lr$lr --quiet; done"]),
    Output("eos-guide", "docs/guides/eos.md",
           [f"sharp eos {DEFAULT_RUN}", "sharp eos --lr 0.1 --rho 0.05 --grad-norm 0.3"],
           setup=[DEFAULT_TRAIN]),
    Output("spectrum-run", "docs/guides/spectrum.md", [f"sharp spectrum {DEFAULT_RUN}/"],
           keep=spectrum_rows, setup=[DEFAULT_TRAIN]),
    Output("spectrum-trace", "docs/guides/spectrum.md", [
        "sharp spectrum checkpoints/mnist1d-mlp-gd-lr0.3-seed0/step-00001000.pt --trace",
        "sharp spectrum checkpoints/mnist1d-mlp-gd-lr0.3-seed0/step-00001000.pt --trace "
        "--trace-method hutchinson"], keep=trace_rows, setup=[DEFAULT_TRAIN]),
    Output("adaptive-train", "docs/guides/adaptive.md", [
        "sharp train --optimizer adam --lr 0.001 --steps 2000 --sharpness-every 40 --eval-every 40",
        "sharp eos --lr 1e-3 --optimizer adam --beta1 0.9"]),
    Output("own-loop", "docs/guides/own-model.md", [
        "python examples/own_loop.py && sharp eos reports/own-loop",
        ("sharp spectrum reports/own-loop --model-factory examples.own_loop:make_model \\\n"
         "      --dataset mnist1d --train-size 1000 --top-k 3",
         "sharp spectrum reports/own-loop --model-factory examples.own_loop:make_model "
         "--dataset mnist1d --train-size 1000 --top-k 3")]),
    Output("callbacks-lightning", "docs/guides/callbacks.md",
           ["python examples/lightning_callback.py && sharp eos reports/lightning"]),
    Output("callbacks-hf", "docs/guides/callbacks.md",
           ["python examples/hf_callback.py && sharp eos reports/hf"],
           keep=without_trainer_summary),
    Output("readme-callbacks", "README.md", [], inline=callbacks_sentence),
    # the flows guide's tables: the default run flowed to step 1000 (the command's CPU time
    # is the README's) and the same with η = 0.2 (set up, not timed), and a short full-batch
    # RMSProp run, all with a checkpoint at every step for the covariance check (61 MB each
    # for the default runs)
    Output("flow-gd", "docs/guides/flow.md",
           ["sharp flow reports/flow-lr0.3 --quiet",
            ("python benchmarks/flow_tables.py --distance-every 10 "
             "'η = 0.3=reports/flow-lr0.3' 'η = 0.2=reports/flow-lr0.2'")],
           setup=[f"sharp train {FLOW_TRAIN} --run-name flow-lr0.3 --quiet",
                  f"sharp train --lr 0.2 {FLOW_TRAIN} --run-name flow-lr0.2 --quiet && "
                  "sharp flow reports/flow-lr0.2 --quiet"], markdown=True),
    Output("readme-flow", "README.md", [], inline=flow_sentence),
    Output("flow-rmsprop", "docs/guides/flow.md",
           ["sharp flow reports/rms --quiet",
            "python benchmarks/flow_tables.py 'RMSProp, η = 0.003=reports/rms'"],
           setup=[f"sharp train {RMSPROP_TRAIN} --run-name rms --quiet"], markdown=True),
]
BY_NAME = {o.name: o for o in OUTPUTS}


def environment() -> dict:
    """`sharp` and `python examples/...` as from the clone, one thread unless told."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # this interpreter's `sharp` and `python` first: a venv's, whether or not it is activated
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def scratch(folder: Path) -> Path:
    """A folder where `examples/` and `benchmarks/` are the clone's, as in the clone itself."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("examples", "benchmarks"):
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    return folder


def shell(command: str, folder: Path) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=folder, env=environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1):  # 1: a --strict verdict, still an output
        raise RuntimeError(f"{command!r} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def generate(output: Output, folder: Path, seconds: dict, ran: set) -> str:
    """The text `output` shows, run in `folder` (runs made by earlier outputs are kept)."""
    if output.inline is not None:
        return output.inline(folder, seconds)
    for line in output.setup:
        if line not in ran:
            shell(line, folder)
            ran.add(line)
    shown, start = [], _cpu()
    for i, command in enumerate(output.commands):
        display, run = command if isinstance(command, tuple) else (command, command)
        lines = [line.rstrip() for line in shell(run, folder).rstrip("\n").splitlines()]
        shown += ([] if output.markdown else [f"$ {display}"]) + \
            (output.keep(i, lines) if output.keep else lines)
    seconds[output.name] = _cpu() - start
    return "\n".join(shown)


def _cpu() -> float:
    """CPU seconds of the commands run so far: what a run costs, however busy the machine
    (with one thread, about its wall time on an idle one)."""
    t = os.times()
    return t.children_user + t.children_system


def render(output: Output, text: str) -> str:
    """The block between the markers: the text, and the torch version that printed it."""
    import torch

    if output.inline is not None:
        return f"{text} (torch {torch.__version__})"
    if output.markdown:
        made = "; ".join(f"`{c if isinstance(c, str) else c[0]}`"
                         for c in [*output.setup, *output.commands])
        return f"{text}\n\n*Made by {made}; printed by torch {torch.__version__} on the CPU.*"
    return f"```text\n{text}\n```\n\n*Printed by torch {torch.__version__} on the CPU.*"


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def differences(output: Output, shown: str, fresh: str) -> list[str]:
    """Where the text `shown` on the page (a rendered block) and a `fresh` one disagree:
    words exactly, numbers to `output.rtol`, the `volatile` parts not at all."""
    fenced = re.search(r"```text\n(.*?)\n```", shown, re.DOTALL)
    shown = fenced.group(1) if fenced else shown
    for pattern in output.volatile:
        shown, fresh = re.sub(pattern, "…", shown), re.sub(pattern, "…", fresh)
    found = []
    for a, b in zip(shown.splitlines(), fresh.splitlines()):
        words_a, words_b = NUMBER.sub("#", a), NUMBER.sub("#", b)
        numbers_a = [float(x) for x in NUMBER.findall(a)]
        numbers_b = [float(x) for x in NUMBER.findall(b)]
        close = all(abs(x - y) <= output.rtol * max(abs(x), abs(y)) for x, y in zip(numbers_a, numbers_b))
        if words_a != words_b or not close:
            found.append(f"page: {a}\nnow:  {b}")
    if len(shown.splitlines()) != len(fresh.splitlines()):
        found.append(f"{len(shown.splitlines())} lines on the page, {len(fresh.splitlines())} now")
    return found


def documented(output: Output) -> str:
    """What the page holds for `output` now, without the markers."""
    for m in MARKER.finditer((ROOT / output.page).read_text()):
        if m.group("name") == output.name:
            return m.group("body")
    raise KeyError(f"{output.page} has no <!-- output: {output.name} --> marker")


def write(output: Output, text: str) -> None:
    """Replace the block between `output`'s markers on its page."""
    documented(output)  # the markers are there
    page = ROOT / output.page

    def replace(m: re.Match) -> str:
        if m.group("name") != output.name:
            return m.group(0)
        return m.group(1) + render(output, text) + m.group(4)

    page.write_text(MARKER.sub(replace, page.read_text()))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        for o in OUTPUTS:
            print(f"{o.name:24} {o.page:28} {'rerun by the tests' if o.cheap else ''}")
        return 0
    unknown = [n for n in argv if n not in BY_NAME]
    if unknown:
        print(f"unknown output {unknown[0]!r}; --list names them", file=sys.stderr)
        return 2
    chosen = [BY_NAME[n] for n in argv] or OUTPUTS
    if any(o.name == "readme-callbacks" for o in chosen):  # its sentence needs both runs
        chosen = [o for o in OUTPUTS if o.name in ("callbacks-lightning", "callbacks-hf")
                  and o not in chosen] + chosen
    if any(o.name == "readme-flow" for o in chosen) and BY_NAME["flow-gd"] not in chosen:
        chosen = [BY_NAME["flow-gd"]] + chosen  # its sentence reads flow-gd's run
    # getting-started's `sharp train` makes the default run the others read: first
    first = [o for o in chosen if o.name == "getting-started-train"]
    chosen = first + [o for o in chosen if o not in first]
    seconds, ran = {}, set()
    with tempfile.TemporaryDirectory() as tmp:
        folder = scratch(Path(tmp))
        for output in chosen:
            text = generate(output, folder, seconds, ran)
            if output in first:
                ran.add(DEFAULT_TRAIN)
            write(output, text)
            print(f"{output.name}: {output.page} ({seconds.get(output.name, 0):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
