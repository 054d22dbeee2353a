"""Shared pieces of the benchmarks: thread setup, the machine's state, trained checkpoints,
interleaved timing with medians, and markdown tables.

Ratios, not absolute times, are what the benchmarks report: competing variants are timed
interleaved in one process (A, B, A, B, ...) so that a burst of load from elsewhere hits
both alike, and each figure is the median of several repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("SHARP_BENCH_WORK", "/tmp/sharpcli-bench"))
OUT = HERE / "out"


def base_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats; the median is reported")
    p.add_argument("--quick", action="store_true", help="small sizes, for debugging the script")
    return p


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def machine_line(threads: int) -> str:
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {threads} thread(s), load average "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, timed round-robin so that load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def trained_checkpoint(tag: str, **settings) -> Path:
    """The last checkpoint of a short `sharp train` run with these settings, trained once and
    reused (under $SHARP_BENCH_WORK, default /tmp/sharpcli-bench)."""
    from sharpcli.config import TrainConfig
    from sharpcli.formats.checkpoints import list_checkpoints
    from sharpcli.training.loop import train

    digest = hashlib.sha1(repr(sorted(settings.items())).encode()).hexdigest()[:8]
    tag = f"{tag}-{digest}"  # a change of settings trains a new run
    ckpt_dir = WORK / "checkpoints" / tag
    found = list_checkpoints(ckpt_dir) if ckpt_dir.exists() else []
    if found:
        return found[-1]
    config = TrainConfig(run_name=tag, reports_dir=str(WORK / "reports"),
                         checkpoints_dir=str(WORK / "checkpoints"), sharpness_every=0,
                         eval_every=10**9, checkpoint_every=10**9, quiet=True, device="cpu",
                         **settings)
    train(config)
    return list_checkpoints(ckpt_dir)[-1]


def table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            if v != v:
                return "–"
            if v == 0:
                return "0"
            a = abs(v)
            return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, text: str) -> Path:
    """benchmarks/out/<name>.md: one section of RESULTS.md, assembled by run_all.py."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.md"
    path.write_text(text.rstrip() + "\n")
    print(text)
    return path


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:])
