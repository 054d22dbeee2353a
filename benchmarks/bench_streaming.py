"""What streaming costs: the top-5 of the 276k MLP at its edge (benchmarks §1's `mlp-0.3M`)
from in-memory tensors against the same examples as a stream of host batches and as a
DataLoader; then a spectrum over a lazily generated data set of several GB, with the
process's peak memory against the data set's size.

    python benchmarks/bench_streaming.py            # both parts
    python benchmarks/bench_streaming.py --part memory --gigabytes 3

The memory part runs in a fresh process of its own so that its peak resident size is the
measurement's, not the first part's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (base_parser, command_line, interleaved, machine_line, setup,  # noqa: E402
                    table, trained_checkpoint, write_section)

import sharpcli  # noqa: E402

MLP = dict(model="mlp", width=500, depth=2, lr=0.1, steps=800)  # bench_spectrum's mlp-0.3M
QUICK_MLP = dict(model="mlp", width=50, depth=2, lr=0.3, steps=50, train_size=400)
FEATURES, CLASSES, BATCH = 1000, 10, 4096


def ways(x, y, chunk: int) -> dict:
    """The same examples, four ways: one in-memory chunk (the cached-graph path), in-memory
    chunks, a list of host batches, a DataLoader of a TensorDataset."""
    host = [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)]
    return {"in memory, one chunk": dict(data=x, y=y, chunk_size=len(x)),
            f"in memory, chunks of {chunk}": dict(data=x, y=y, chunk_size=chunk),
            f"list of {len(host)} host batches": dict(data=host),
            f"DataLoader, batch {chunk}": dict(data=DataLoader(TensorDataset(x, y), batch_size=chunk))}


def top5(model, loss_fn, data, y=None, chunk_size=None) -> tuple[list[float], int]:
    rows = sharpcli.spectrum(model, loss_fn, data, y, top_k=5, chunk_size=chunk_size, seed=0)
    return [r["value"] for r in rows], rows[0]["n_hvp"]


def cost_part(args) -> str:
    ckpt = sharpcli.load_checkpoint(trained_checkpoint("spectrum-mlp-0.3M",
                                                       **(QUICK_MLP if args.quick else MLP)))
    x, y = ckpt.data()[:2]
    n = sum(p.numel() for p in ckpt.model.parameters())
    chunk = max(1, len(x) // 4)
    variants = ways(x, y, chunk)
    found = {name: top5(ckpt.model, ckpt.loss_fn, **kw) for name, kw in variants.items()}
    times = interleaved({name: (lambda kw=kw: top5(ckpt.model, ckpt.loss_fn, **kw))
                         for name, kw in variants.items()}, args.repeats)
    base = next(iter(times.values()))
    ref = next(iter(found.values()))[0]
    rows = [[name, found[name][1], times[name], times[name] / base,
             max(abs(a - b) / abs(b) for a, b in zip(found[name][0], ref))]
            for name in variants]
    return (f"The top-5 of the {n:,}-parameter MLP at its edge ({len(x)} examples), "
            f"Lanczos at the default tolerance: the same products whatever the source; the "
            f"seconds are medians of {args.repeats} interleaved repeats.\n\n"
            + table(["data", "products", "seconds", "× in memory", "max rel. diff of λ"], rows))


class Lazy:
    """`n_batches` batches of BATCH examples × FEATURES floats, each generated afresh from
    its index on every pass (the same numbers each time): a data set that never exists
    whole anywhere."""

    def __init__(self, n_batches: int):
        self.n_batches = n_batches

    def __call__(self):
        for i in range(self.n_batches):
            gen = torch.Generator().manual_seed(i)
            x = torch.randn(BATCH, FEATURES, generator=gen)
            yield x, torch.randint(0, CLASSES, (BATCH,), generator=gen)


def memory_part(args) -> dict:
    """In this process: the spectrum of a small MLP over the lazy data set, and the peak
    resident size before and after."""
    setup(args.threads)
    n_batches = max(1, int(args.gigabytes * 1e9 / (BATCH * FEATURES * 4)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, CLASSES))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    rows = sharpcli.spectrum(model, "ce", Lazy(n_batches), top_k=1, tol=1e-2, max_iter=20)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"data_bytes": n_batches * BATCH * FEATURES * 4, "examples": n_batches * BATCH,
            "batch_bytes": BATCH * FEATURES * 4, "peak_before": before, "peak_after": peak,
            "lambda1": rows[0]["value"], "n_hvp": rows[0]["n_hvp"], "seconds": seconds}


def memory_section(args) -> str:
    cmd = [sys.executable, __file__, "--part", "memory-child", "--gigabytes", str(args.gigabytes),
           "--threads", str(args.threads)]
    found = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    gb = 1e9
    return (f"A spectrum (λ₁ by Lanczos, tol 1e-2) of an 8k-parameter MLP over "
            f"{found['examples']:,} examples × {FEATURES} floats generated lazily, batch by "
            f"batch ({found['data_bytes'] / gb:.1f} GB in all, {found['batch_bytes'] / 1e6:.1f} MB "
            f"a batch): {found['n_hvp']} products plus one pass to count and one to check the "
            f"source, {found['seconds']:.0f} s. Peak resident memory of the process: "
            f"{found['peak_before'] / gb:.2f} GB before the measurement (Python, torch, the "
            f"model), {found['peak_after'] / gb:.2f} GB after it — "
            f"{(found['peak_after'] - found['peak_before']) / 1e6:.0f} MB more for a "
            f"{found['data_bytes'] / gb:.1f} GB data set.")


def main():
    p = base_parser(__doc__)
    p.add_argument("--part", choices=["all", "cost", "memory", "memory-child"], default="all")
    p.add_argument("--gigabytes", type=float, default=3.0, help="size of the lazy data set")
    args = p.parse_args()
    if args.part == "memory-child":
        print(json.dumps(memory_part(args)))
        return
    setup(args.threads)
    parts = []
    if args.part in ("all", "cost"):
        parts.append(cost_part(args))
    if args.part in ("all", "memory"):
        parts.append(memory_section(args))
    write_section("streaming", f"## 7. Streamed data against tensors in memory\n\n`{command_line()}`"
                               f" — {machine_line(args.threads)}\n\n" + "\n\n".join(parts))


if __name__ == "__main__":
    main()
