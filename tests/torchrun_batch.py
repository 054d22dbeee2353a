"""Run several `sharp` commands in one torchrun launch, for tests/test_distributed.py.

    torchrun --standalone --nproc-per-node 2 tests/torchrun_batch.py COMMANDS.json

joins one process group (gloo, 60 s for any collective) and runs each command of the JSON
list of argument lists through sharpcli.cli.main, which uses that group. Exits 1 at the first
command that does not exit 0. A torchrun start costs seconds on a small machine; this pays it
once for all the commands."""

import datetime
import json
import sys

import torch.distributed as dist

from sharpcli.cli import main

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
for argv in json.loads(open(sys.argv[1]).read()):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    if code != 0:
        print(f"sharp {' '.join(argv)} exited {code}", file=sys.stderr)
        sys.exit(1)
dist.destroy_process_group()
