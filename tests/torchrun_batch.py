"""Run several `sharp` commands in one torchrun launch, for tests/test_distributed.py.

    torchrun --standalone --nproc-per-node 2 tests/torchrun_batch.py COMMANDS.json

joins one process group (gloo, 60 s for any collective) and runs each command of the JSON
list of argument lists through sharpcli.cli.main, which uses that group. Exits 1 at the first
command that does not exit 0. A torchrun start costs seconds on a small machine; this pays it
once for all the commands.

The group is sharpcli.distributed.process_group's, torn down as `sharp` tears down its own;
each process then writes the names of its threads, while the group lived and once it was
destroyed, to threads-RANK.json beside COMMANDS.json: a group something still holds keeps its
gloo threads past the command, into the interpreter's exit, where they abort the process."""

import json
import os
import sys
from pathlib import Path

from sharpcli.cli import main
from sharpcli.distributed import process_group


def thread_names() -> list[str]:
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip()
                  for t in os.listdir("/proc/self/task"))


commands = Path(sys.argv[1])
with process_group("cpu", timeout=60):
    for argv in json.loads(commands.read_text()):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        if code != 0:
            print(f"sharp {' '.join(argv)} exited {code}", file=sys.stderr)
            sys.exit(1)
    during = thread_names()
threads = {"during": during, "after": thread_names()}
commands.with_name(f"threads-{os.environ['RANK']}.json").write_text(json.dumps(threads))
