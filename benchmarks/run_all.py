"""Run every benchmark and assemble benchmarks/RESULTS.md from their sections.

    .venv/bin/python benchmarks/run_all.py [--threads 1] [--repeats 5] [--only spectrum hvp ...]

Each script also runs alone (`python benchmarks/bench_hvp.py --help`) and writes its section
to benchmarks/out/<name>.md; this script concatenates the sections it finds there, so a
section re-run alone replaces only itself. Text below the line `<!-- closing note -->` in
an existing RESULTS.md is kept: the closing note is written by hand from the tables.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import HERE, OUT

ORDER = ["spectrum", "hvp", "training", "scaling", "distributed", "tracking", "streaming", "flow",
         "large"]
MARK = "<!-- closing note -->"

HEADER = """# sharpcli benchmarks

Figures are ratios of times measured side by side, in one process, on the machine named in
each section (thread count and load average included). Competing variants run interleaved
and each figure is a median over repeats; still, absolute milliseconds depend on the load
of the moment, so read the ratios. No test asserts a timing.

Reproduce everything (about 70 minutes on 2 cores, plus about 20 the first time for the
spectrum section's float64 references, which are then cached; the spectrum section's
curvlinops peer comes with `pip install -e '.[bench]'`):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_all.py --threads 1

or one section: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_<name>.py --threads 1`
(`--quick` for small sizes when editing a script). Trained checkpoints are cached in
$SHARP_BENCH_WORK (default /tmp/sharpcli-bench).
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=ORDER, default=ORDER)
    p.add_argument("--assemble-only", action="store_true",
                   help="run nothing; rebuild RESULTS.md from benchmarks/out/")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for name in ([] if args.assemble_only else args.only):
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--threads", str(args.threads),
               "--repeats", str(args.repeats)]
        print("$", " ".join(cmd), "  # load", os.getloadavg(), file=sys.stderr)
        subprocess.run(cmd, check=True, env=env, cwd=HERE)
    results = HERE / "RESULTS.md"
    note = ""
    if results.exists() and MARK in results.read_text():
        note = results.read_text().split(MARK, 1)[1]
    sections = []
    for n in ORDER:  # a full-size section, else the --quick one, labelled as such
        if (OUT / f"{n}.md").exists():
            sections.append((OUT / f"{n}.md").read_text())
        elif (OUT / f"{n}-quick.md").exists():
            text = (OUT / f"{n}-quick.md").read_text()
            sections.append(text.replace("\n", "\n\n**Quick sizes only (`--quick`): the full-size "
                                         "run did not finish in this session.**\n", 1))
    results.write_text("\n".join([HEADER] + sections) + f"\n{MARK}{note or chr(10)}")
    print(f"wrote {results}", file=sys.stderr)


if __name__ == "__main__":
    main()
