"""For the trainers' FSDP2 runs launched by benchmarks/gpu_check.sh (one GPU, nccl): rank 0
compares a callback's metrics.csv with tests/integrations/problem.py's plain loop (one
unsharded process on the CPU, float64) and prints the largest relative difference of each
compared column as one JSON line, with PASS when every one is within 1e-6."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from tests.integrations.problem import COMPARED, plain_loop


def report(run_dir: Path, sharded: bool, trainer: str, main: bool) -> dict | None:
    """On every process (the plain loop's Tracker sums over the launch's processes); `main`
    prints."""
    with tempfile.TemporaryDirectory() as tmp:
        reference = plain_loop(Path(tmp) / "loop")
    if not main:
        return None
    rows = pd.read_csv(run_dir / "metrics.csv").to_dict("records")
    worst = {key: max((abs(r[key] - ref[key]) / abs(ref[key]) if ref[key] else abs(r[key]))
                      for r, ref in zip(rows, reference)) for key in COMPARED}
    same_steps = [r["step"] for r in rows] == [r["step"] for r in reference]
    verdict = {"trainer": trainer, "sharded": sharded, "same_steps": same_steps,
               "max_rel": worst,
               "pass": sharded and same_steps and max(worst.values()) <= 1e-6}
    print(json.dumps(verdict))
    return verdict
