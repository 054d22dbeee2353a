"""Where the top-5 solve's time goes: sharpcli against PyHessian on bench_spectrum's width-500
MLP checkpoint (mlp-0.3M), timed interleaved (sharpcli, PyHessian, sharpcli, ...) in one
process, and one sharpcli solve profiled.

Each timed call builds its operator (forward and backward with create_graph) and solves for
the top 5 as `sharp spectrum` does by default (bench_spectrum's `native` and `PyHessianRun`,
seed 0 each time, so both sides take the same products every repeat). The profile splits
one solve's time into the products (the autograd backward through the cached graph, the
operator's `_local`) and everything else, by cProfile's cumulative times.

Runs against whichever sharpcli is first on the path: with PYTHONPATH set to an older
checkout it measures that one (before/after), as long as that checkout's bench_spectrum
has `native` and `PyHessianRun`.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time

from common import base_parser, command_line, machine_line, setup, table, trained_checkpoint
import sharpcli
from bench_spectrum import CASES, PyHessianRun, native

CASE = "mlp-0.3M"


def profile_solve(model, x, y) -> dict[str, float]:
    """Seconds of one profiled top-5 solve: in all, in the backward passes of the products,
    in building the operator, and the rest."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(native, model, x, y, "top5", 0)
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    total = max(ct for (_, _, _), (_, _, _, ct, _) in stats.items())

    def cumulative(fn_name: str, file_part: str) -> float:
        return sum(ct for (f, _, name), (_, _, _, ct, _) in stats.items()
                   if name == fn_name and file_part in f)

    products = cumulative("_local", "hessian/operator.py")
    build = cumulative("__init__", "hessian/operator.py")
    return {"wall": wall, "profiled": total, "products": products, "build": build,
            "other": total - products - build}


def main():
    p = base_parser(__doc__)
    args = p.parse_args()
    setup(args.threads)
    settings, _ = CASES[CASE]
    ckpt = sharpcli.load_checkpoint(trained_checkpoint(f"spectrum-{CASE}", **settings))
    model, (x, y) = ckpt.model, ckpt.data()[:2]
    ph = PyHessianRun(model, x, y)
    calls = {"sharpcli": lambda: native(model, x, y, "top5", 0),
             "pyhessian": lambda: ph("top5", 0)}
    counts = {name: fn()[1] for name, fn in calls.items()}  # also the warm-up
    # wall time, and this process's CPU time: on one thread the work done, which load from
    # other processes slows far less than the wall clock
    secs: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            secs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    parts = profile_solve(model, x, y)
    rows = [[name, counts[name], statistics.median(secs[name]), min(secs[name]),
             statistics.median(cpu[name])] for name in calls]
    print(f"{machine_line(args.threads)}\n{command_line()}\n")
    print(table(["top 5 of " + CASE, "products", "median wall s", "min wall s", "median CPU s"], rows))
    for label, times in (("wall", secs), ("CPU", cpu)):
        ratios = [a / b for a, b in zip(times["sharpcli"], times["pyhessian"])]
        print(f"\nsharpcli / PyHessian, {label} time: median of the per-repeat ratios "
              f"{statistics.median(ratios):.3f} (each repeat: {', '.join(f'{r:.3f}' for r in ratios)}); "
              f"per product {statistics.median(ratios) * counts['pyhessian'] / counts['sharpcli']:.3f}")
    print(f"profiled sharpcli solve: {parts['profiled']:.3g} s, of which products "
          f"{parts['products']:.3g} s, building the operator {parts['build']:.3g} s, "
          f"the rest {parts['other']:.3g} s ({parts['other'] / parts['profiled']:.1%})")


if __name__ == "__main__":
    main()
