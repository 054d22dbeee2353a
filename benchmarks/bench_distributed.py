"""Many processes: a top-5 spectrum on 2 torchrun processes against 1, the all-reduce's share
of a gd step and of an HVP, the bytes a step sends, and the memory per process.

Everything runs on this machine's CPU cores with gloo, one thread per process, so the two
processes of a launch split the products' work between two cores:
- spectrum: `sharp spectrum CKPT --top-k 5` on the 276k-parameter MLP checkpoint of the
  spectrum benchmark (width 500, GD at η = 0.1), in one process and under `torchrun
  --nproc-per-node 2`, alternated; the time is the solve's own (spectrum.csv's `seconds`,
  without the launch), the launch's wall time beside it;
- shares: inside a 2-process launch, a gd step's gradient through DistributedDataParallel
  against the same passes without its all-reduce, and an HVP summed over the processes
  against the same product on the shard alone; bytes sent per step from the loopback
  interface's counters (/proc/net/dev) over a block of steps, both processes together;
- memory: each process's peak RSS above its base during a Lanczos run of m iterations on
  MLPs of two widths, fitted as a + b·P; the basis (m·P·4 B) is replicated on every process.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (HERE, base_parser, command_line, machine_line, table, trained_checkpoint,
                    write_section)

GIB = 2**30
SPECTRUM_CASE = dict(model="mlp", width=500, depth=2, lr=0.1, steps=200)  # bench_spectrum's


def torchrun(args: list[str], threads: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=3600)


def spectrum_seconds(ckpt: Path, procs: int, threads: int) -> tuple[float, float, int]:
    """(solve seconds, launch wall seconds, HVPs) of one `sharp spectrum --top-k 5`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.csv"
        args = ["spectrum", str(ckpt), "--top-k", "5", "--out", str(out), "--quiet"]
        t0 = time.perf_counter()
        if procs == 1:
            subprocess.run([sys.executable, "-m", "sharpcli", *args], check=True,
                           env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        else:
            torchrun(["-m", "sharpcli", *args], threads)
        wall = time.perf_counter() - t0
        import pandas as pd

        row = pd.read_csv(out).iloc[0]
        return float(row["seconds"]), wall, int(row["n_hvp"])


# ---------------------------------------------------------------- the 2-process worker

def worker(threads: int, repeats: int, quick: bool) -> None:
    """Run under torchrun: shares of the all-reduce, bytes per step, memory per process."""
    import torch

    from sharpcli.distributed import SINGLE, process_group
    from sharpcli.hessian import HessianOperator
    from sharpcli.hessian.losses import mse_loss
    from sharpcli.linalg import lanczos
    from sharpcli.training.parallel import batch_gradient, data_parallel
    from sharpcli.workload.data import load_dataset
    from sharpcli.workload.models import build_model

    torch.set_num_threads(threads)
    out = {}
    with process_group("cpu", 600) as d:
        data = load_dataset("mnist1d", train_size=1000)
        x, y = data.x_train, data.y_train
        for width in ([100] if quick else [100, 500]):
            torch.manual_seed(0)
            model = build_model("mlp", (40,), 10, width=width).train()
            ddp = data_parallel(model, d)
            p = sum(q.numel() for q in model.parameters())
            sl = d.shard(len(x))

            def synced():
                batch_gradient(ddp, mse_loss, x, y, 4096, d)

            def local():  # the same passes on the shard, without the all-reduce
                batch_gradient(model, mse_loss, x[sl], y[sl], 4096, SINGLE)

            op = HessianOperator(model, mse_loss, x, y, dist=d)
            op_local = HessianOperator(model, mse_loss, x[sl], y[sl])
            v = torch.randn(p, generator=torch.Generator().manual_seed(0))
            times = _interleaved({"step": synced, "step_local": local,
                                  "hvp": lambda: op.matvec(v),
                                  "hvp_local": lambda: op_local.matvec(v)}, repeats, d)
            before = _loopback_bytes()
            d.barrier()
            steps = 20
            for _ in range(steps):
                synced()
            d.barrier()
            sent = (_loopback_bytes() - before) / steps
            out[width] = dict(params=p, **times, bytes_per_step=sent)
        for width in ([50, 100] if quick else [200, 800]):
            out[f"mem{width}"] = _lanczos_memory(width, x, y, d, iters=30)
    if d.is_main:
        print("RESULT " + json.dumps(out))


def _interleaved(fns, repeats, d) -> dict:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            d.barrier()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _loopback_bytes() -> int:
    """Bytes the loopback interface has carried (both processes' traffic), from the kernel."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[8])  # transmit bytes
    return 0


def _lanczos_memory(width, x, y, d, iters) -> dict:
    import torch

    from sharpcli.hessian import HessianOperator
    from sharpcli.hessian.losses import mse_loss
    from sharpcli.linalg import lanczos
    from sharpcli.workload.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10, width=width).eval()
    p = sum(q.numel() for q in model.parameters())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lanczos(HessianOperator(model, mse_loss, x, y, dist=d), k=1, tol=0.0, max_iter=iters, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = d.sum(float(max(peak - base, 0))) / d.world_size  # the mean over processes
    return dict(params=p, extra_bytes=extra, basis_bytes=iters * p * 4, iters=iters)


# ---------------------------------------------------------------- the report

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
        return
    p = base_parser(__doc__.splitlines()[0])
    args = p.parse_args()
    ckpt = trained_checkpoint("spectrum-mlp-0.3M", **SPECTRUM_CASE) if not args.quick else \
        trained_checkpoint("spectrum-mlp-5k", model="mlp", width=20, depth=1, lr=0.3, steps=50,
                           train_size=200)
    pairs = []
    for _ in range(max(1, args.repeats // 2)):
        pairs.append((spectrum_seconds(ckpt, 1, args.threads), spectrum_seconds(ckpt, 2, args.threads)))
    one = [a for a, _ in pairs]
    two = [b for _, b in pairs]
    med = lambda runs, i: statistics.median(r[i] for r in runs)  # noqa: E731
    res = torchrun([__file__, "--worker", str(args.threads), str(args.repeats),
                    "1" if args.quick else "0"], args.threads)
    shares = json.loads(next(line for line in res.stdout.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    text = [f"## 5. Many processes: 2 torchrun processes against 1\n",
            f"`{command_line()}` — {machine_line(args.threads)}; gloo on this machine's "
            f"loopback, {args.threads} thread(s) per process.\n",
            f"**Top-5 spectrum** of `{ckpt.parent.name}` (medians of {len(pairs)} alternated "
            "launches; HVPs are the same count in both):\n",
            table(["processes", "solve s", "launch wall s", "HVPs"],
                  [[1, med(one, 0), med(one, 1), one[0][2]], [2, med(two, 0), med(two, 1), two[0][2]]]),
            "",
            f"- ratio 2 processes / 1: **{med(two, 0) / med(one, 0):.2f}×** for the solve, "
            f"{med(two, 1) / med(one, 1):.2f}× for the whole launch (torchrun's start included).",
            "",
            "**The all-reduce's share** (inside one 2-process launch, medians; \"alone\" is the "
            "same work on the process's shard without summing):\n"]
    rows = []
    for key, r in shares.items():
        if key.startswith("mem"):
            continue
        rows.append([f"{r['params']:,}", r["step"] * 1e3, r["step_local"] * 1e3,
                     1 - r["step_local"] / r["step"], r["hvp"] * 1e3, r["hvp_local"] * 1e3,
                     1 - r["hvp_local"] / r["hvp"], r["bytes_per_step"] / 1e6,
                     4 * r["params"] / 1e6])
    text += [table(["params P", "gd step ms", "alone ms", "all-reduce share", "HVP ms",
                    "alone ms", "all-reduce share", "MB sent per step (measured)",
                    "MB of gradient (4P)"], rows), ""]
    mems = [r for k, r in shares.items() if k.startswith("mem")]
    (b0, p0), (b1, p1) = [(m["extra_bytes"] - m["basis_bytes"], m["params"]) for m in mems]
    per_param = (b1 - b0) / (p1 - p0)
    fixed = max(b0 - per_param * p0, 0.0)  # the fit's intercept: noise around 0 at these sizes
    for_iters = lambda it: it * 4 + per_param  # noqa: E731
    text += [f"**Memory per process**: Lanczos with m iterations holds the m·P·4 B basis on "
             f"every process (the Krylov vectors are replicated); the rest measured "
             f"≈ {per_param:.0f} B per parameter above a fixed {fixed / 2**20:.0f} MiB (the fit's "
             "intercept, clipped at 0) "
             f"(MLPs of {p0:,} and {p1:,} parameters, 1000 examples split over 2 processes).",
             f"- With the default max_iter 100: ≈ {for_iters(100):.0f} B per parameter per process, "
             f"so about {(24 * GIB - fixed) / for_iters(100) / 1e6:.0f}M parameters fit in 24 GiB "
             f"and {(80 * GIB - fixed) / for_iters(100) / 1e6:.0f}M in 80 GiB per process; "
             f"with max_iter 20, {(24 * GIB - fixed) / for_iters(20) / 1e6:.0f}M and "
             f"{(80 * GIB - fixed) / for_iters(20) / 1e6:.0f}M. More processes split the "
             "examples (activations), not the basis."]
    write_section("distributed" + ("-quick" if args.quick else ""), "\n".join(text))


if __name__ == "__main__":
    main()
