"""Tracking cost and accuracy: the default `sharp train` with λ₁ every 20 steps against the
same run untracked, and every logged λ₁ against a tight solve of the checkpoint of its step.

Variants, each a whole default run (MNIST-1D, tanh MLP 15k, GD η = 0.3, 1000 steps,
evaluation every 20 steps in all of them), timed interleaved in one process:
- untracked: --sharpness-every 0;
- tracked: --sharpness-every 20 as shipped (λ₁ to a relative accuracy of --sharpness-tol
  1e-3: Lanczos warm-started from the last v₁, stopping once the estimated error
  min(r, r²/gap) ≤ 1e-3·λ and λ has settled);
- tracked, residual 1e-3: the previous rule (stop at ‖Hv − λv‖ ≤ 1e-3·λ), for comparison.
The figure is the run's wall time (train()'s own clock, data loading excluded), median over
repeats. Accuracy: the tracked run also saves a checkpoint at every measured step; each is
solved tightly (float64, lanczos_top_k, residual tol 1e-10) and compared with the row.

What limits the cost: the products per measurement. For each measured step the script also
records how many products a Lanczos run from the previous v₁ needs before its Ritz value is
within 1e-3 of the tight λ₁ (an oracle stop, no criterion can do better from that start),
from a random start, and |cos| between consecutive v₁.
"""

from __future__ import annotations

import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import base_parser, command_line, machine_line, setup, table, write_section
import sharpcli
import sharpcli.hessian.sharpness as sharpness_module
from sharpcli.config import TrainConfig
from sharpcli.formats.checkpoints import list_checkpoints
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import lanczos, lanczos_top_k
from sharpcli.linalg.lanczos import LanczosProcess
from sharpcli.training.loop import train


def run(root: str, name: str, steps: int, every: int, checkpoints: bool = False) -> tuple[float, list[dict]]:
    config = TrainConfig(reports_dir=f"{root}/reports", checkpoints_dir=f"{root}/checkpoints",
                         run_name=name, steps=steps, quiet=True, device="cpu", seed=0,
                         sharpness_every=every, eval_every=20,
                         checkpoint_every=every if checkpoints else 10**9)
    result = train(config)
    if not checkpoints:
        shutil.rmtree(f"{root}/checkpoints/{name}", ignore_errors=True)
    shutil.rmtree(f"{root}/reports/{name}", ignore_errors=True)
    return result.seconds, result.rows


def residual_rule():
    """measure_sharpness with the previous stopping rule, for the duration of a call."""
    real = sharpness_module.measure_sharpness
    return functools.partial(real, criterion="residual")


def oracle(op, v0: torch.Tensor, lam: float, tol: float = 1e-3, cap: int = 100) -> int:
    """Products a Lanczos run from v0 takes before its top Ritz value is within tol of lam."""
    proc = LanczosProcess(op, v0 / v0.norm(), min(cap, op.size))
    gen = torch.Generator().manual_seed(0)
    while proc.m < proc.max_steps:
        proc.step()
        theta, _, _ = proc.ritz(1)
        if (lam - float(theta[0])) / lam <= tol:
            return proc.m
        if proc.broke_down:
            proc.restart(gen)
    return proc.m


def warm_start_rows(paths: list[Path]) -> list[list]:
    """sharp spectrum --top-k 5 over the run's checkpoints every 100 steps (the default
    --checkpoint-every), each solve cold or started from the previous checkpoint's vectors."""
    from sharpcli.spectra.compute import compute_spectrum
    from sharpcli.spectra.config import SpectrumConfig
    from sharpcli.spectra.problem import Problem

    paths = [p for p in paths if int(p.stem.split("-")[1]) % 100 == 0]
    rows = []
    for method in ("lanczos", "block"):
        for warm_start in (False, True):
            cfg = SpectrumConfig(top_k=5, method=method)
            warm = {} if warm_start else None
            products = seconds = 0.0
            for path in paths:
                ckpt = sharpcli.load_checkpoint(path)
                x, y = ckpt.data()[:2]
                solve = next(compute_spectrum(Problem(ckpt.model, ckpt.loss_fn, x, y), cfg, warm))
                products, seconds = products + solve.n_hvp, seconds + solve.seconds
            rows.append([f"--method {method}" + (" (with its check)" if method == "lanczos" else ""),
                         "warm" if warm_start else "cold (--no-warm-start)", len(paths),
                         products / len(paths), seconds])
    return rows


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--cost-only", action="store_true",
                   help="time the variants interleaved and stop (no accuracy, floors or warm starts)")
    args = p.parse_args()
    setup(args.threads)
    steps = 100 if args.quick else args.steps
    root = tempfile.mkdtemp(prefix="sharp-bench-track-")
    import sharpcli.training.tracker as tracker_module

    def tracked_old():
        tracker_module.measure_sharpness = residual_rule()
        try:
            return run(root, "old", steps, 20)
        finally:
            tracker_module.measure_sharpness = sharpness_module.measure_sharpness

    variants = {"untracked": lambda: run(root, "off", steps, 0),
                "tracked (default, λ to 1e-3)": lambda: run(root, "on", steps, 20),
                "tracked, residual 1e-3 (previous rule)": tracked_old}
    seconds = {k: [] for k in variants}
    cpu = {k: [] for k in variants}  # this process's CPU time, the run's setup included
    run(root, "warm-up", steps, 20)  # untimed: the first run loads and caches the data
    for _ in range(args.repeats):
        for k, fn in variants.items():
            c0 = time.process_time()
            seconds[k].append(fn()[0])
            cpu[k].append(time.process_time() - c0)
    t = {k: statistics.median(v) for k, v in seconds.items()}
    print({k: f"{v:.2f} s" for k, v in t.items()}, file=sys.stderr)
    if args.cost_only:
        print(f"{machine_line(args.threads)}\n{command_line()}\n")
        for label, times in (("train()'s wall clock", seconds), ("CPU time", cpu)):
            base = times["untracked"]
            print(f"\n{label}:\n")
            print(table(["variant", "median s", "× untracked (median of per-repeat ratios)",
                         "each repeat"],
                        [[k, statistics.median(v), statistics.median(a / b for a, b in zip(v, base)),
                          ", ".join(f"{a / b:.2f}" for a, b in zip(v, base))]
                         for k, v in times.items()]))
        shutil.rmtree(root, ignore_errors=True)
        return

    # products per measurement, each rule (counted by wrapping the Tracker's call)
    counts = {"default": [], "residual": []}

    def counting(fn, into):
        def wrapped(*a, **kw):
            s = fn(*a, **kw)
            into.append(s.n_hvp)
            return s
        return wrapped

    tracker_module.measure_sharpness = counting(residual_rule(), counts["residual"])
    run(root, "count", steps, 20)
    # accuracy and the floor, on one tracked run with a checkpoint at every measured step
    tracker_module.measure_sharpness = counting(sharpness_module.measure_sharpness, counts["default"])
    _, rows = run(root, "acc", steps, 20, checkpoints=True)
    tracker_module.measure_sharpness = sharpness_module.measure_sharpness
    logged = {r["step"]: r["sharpness"] for r in rows if r.get("sharpness") is not None}
    errors, oracle_warm, oracle_cold, cosines, prev = [], [], [], [], None
    gen = torch.Generator().manual_seed(1)
    for path in list_checkpoints(Path(root) / "checkpoints" / "acc"):
        ckpt = sharpcli.load_checkpoint(path)
        x, y = ckpt.data()[:2]
        tight = lanczos_top_k(HessianOperator(ckpt.model.double(), ckpt.loss_fn, x.double(), y), 1,
                              tol=1e-10, max_iter=300)
        lam = float(tight.eigenvalues[0])
        errors.append(abs(logged[ckpt.step] - lam) / lam)
        op = HessianOperator(sharpcli.load_checkpoint(path).model, ckpt.loss_fn, x, y)
        v1 = tight.eigenvectors[:, 0].float()
        if prev is not None:
            oracle_warm.append(oracle(op, prev, lam))
            oracle_cold.append(oracle(op, torch.randn(op.size, generator=gen), lam))
            cosines.append(float((prev @ v1).abs()))
        prev = v1
    warm_rows = warm_start_rows(list_checkpoints(Path(root) / "checkpoints" / "acc"))
    shutil.rmtree(root, ignore_errors=True)
    n = len(errors)
    base = t["untracked"]
    rows_out = [[k, v, v / base] for k, v in t.items()]
    extra = t["tracked (default, λ to 1e-3)"] - base
    per_measure = extra / n
    text = [f"## 6. Tracking λ₁ in `sharp train`: cost and accuracy\n",
            f"`{command_line()}` — {machine_line(args.threads)}\n",
            f"The default run ({steps} steps, MNIST-1D, MLP 15k, GD η = 0.3; evaluation every 20 "
            f"steps in every variant), {args.repeats} interleaved repeats, medians of train()'s "
            "own clock. Target: tracked ≤ 1.25 × untracked.\n",
            table(["variant", "seconds", "× untracked"], rows_out), "",
            f"- Accuracy of the {n} logged λ₁ of the default against a tight solve (float64, "
            f"residual 1e-10) of the checkpoint of the same step: worst relative error "
            f"{max(errors):.2e}, median {statistics.median(errors):.2e} (stated: 1e-3).",
            f"- Products per measurement: {statistics.mean(counts['default']):.1f} (default), "
            f"{statistics.mean(counts['residual']):.1f} (previous rule).",
            f"- Tracking adds {per_measure * 1e3:.1f} ms per measurement. Products an oracle-"
            f"stopped Lanczos needs for 1e-3 (the floor of any stopping rule): from the previous "
            f"v₁ mean {statistics.mean(oracle_warm):.1f} (median {statistics.median(oracle_warm):.0f}, "
            f"max {max(oracle_warm)}), from a random start mean {statistics.mean(oracle_cold):.1f}.",
            f"- |cos(v₁(t − 20), v₁(t))| over the run: median {statistics.median(cosines):.2f}; "
            f"below 0.5 at {sum(c < 0.5 for c in cosines)} of {len(cosines)} measurements "
            f"(first 10: {', '.join(f'{c:.2f}' for c in cosines[:10])}; last 10: "
            f"{', '.join(f'{c:.2f}' for c in cosines[-10:])})."]
    text += ["\n### Warm starts over a run's checkpoints\n",
             "`sharp spectrum RUN --top-k 5` over the same run's checkpoints at every 100 steps "
             "(default settings otherwise), each checkpoint's solve cold or started from the "
             "previous checkpoint's eigenvectors (the default).\n",
             table(["method", "start", "checkpoints", "products per checkpoint", "seconds, all"],
                   warm_rows)]
    write_section("tracking" + ("-quick" if args.quick else ""), "\n".join(text))


if __name__ == "__main__":
    main()
