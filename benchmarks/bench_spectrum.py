"""Spectrum accuracy and cost: sharpcli's solvers against PyHessian on the same checkpoint,
data, device (CPU) and thread count.

For each checkpoint: λ₁, the top 5 and the trace, each by sharpcli (Lanczos; Hutch++ and
Hutchinson) and by PyHessian 0.1 with its defaults (power iteration with deflation, tol 1e-3,
at most 100 products per eigenvalue; Hutchinson, tol 1e-3, at most 100 probes), called
directly. Errors are relative, against
- the dense Hessian (float64, eigvalsh) for the small MLP;
- a tightly converged Lanczos (float64, residual tol 1e-10) for the larger ones, and for the
  trace a float64 Hutch++ with a large budget (its standard error is quoted).
Both sides run in float32 on the model as trained, with a cached gradient graph (one chunk
of all examples). HVPs are counted by wrapping each library's product; wall times include
building the operator (the forward and backward with create_graph), and are medians over
interleaved repeats. Stochastic methods are run over several seeds: errors are medians.
"""

from __future__ import annotations

import copy
import statistics
import sys

import torch
from torch import nn

from common import (base_parser, command_line, interleaved, machine_line, setup, table,
                    trained_checkpoint, write_section)
import sharpcli
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import hutchinson_trace, lanczos
from sharpcli.losses import mse_loss

# pyhessian/__init__.py rebinds the name `pyhessian.hessian` to the class, hiding the
# module: its module-level hessian_vector_product is reached through sys.modules.
import pyhessian  # noqa: E402
PH_MODULE = sys.modules["pyhessian.hessian"]
PH_HVP = PH_MODULE.hessian_vector_product

CASES = {
    # name: (settings of the training run, truth)
    "mlp-5k": (dict(model="mlp", width=50, depth=2, lr=0.3, steps=300), "dense"),
    "mlp-0.3M": (dict(model="mlp", width=500, depth=2, lr=0.1, steps=200), "lanczos"),
    "cnn-20k": (dict(model="cnn", width=64, depth=2, lr=0.1, steps=200), "lanczos"),
}
QUICK = {
    "mlp-5k": (dict(model="mlp", width=20, depth=1, lr=0.3, steps=50, train_size=200), "dense"),
    "cnn-6k": (dict(model="cnn", width=16, depth=2, lr=0.1, steps=50, train_size=200), "lanczos"),
}


class MSECriterion(nn.Module):
    """Our loss as the torch loss module PyHessian wants: 0.5‖f − onehot(y)‖², mean over examples."""

    def forward(self, outputs, labels):
        return mse_loss(outputs, labels)


class PyHessianRun:
    """PyHessian called as its README shows, with its bugs on current torch worked around
    from outside: products counted through its module-level function; `.grad` (which it
    leaves holding a graph) cleared and the model's mode restored afterwards; its global-RNG
    probes seeded."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y
        self.n_hvp = 0

    def _hvp(self, *args, **kwargs):
        self.n_hvp += 1
        return PH_HVP(*args, **kwargs)

    def __call__(self, what: str, seed: int, trace_probes: int | None = None):
        self.n_hvp = 0
        torch.manual_seed(seed)
        self.model.zero_grad(set_to_none=True)
        PH_MODULE.hessian_vector_product = self._hvp
        try:
            h = PH_MODULE.hessian(self.model, MSECriterion(), data=(self.x, self.y), cuda=False)
            if what == "lambda1":
                values = h.eigenvalues(top_n=1)[0]
            elif what == "top5":
                values = h.eigenvalues(top_n=5)[0]
            elif trace_probes is None:
                values = [float(statistics.mean(h.trace()))]
            else:  # exactly trace_probes probes (a tolerance of −inf never stops early), in order
                return h.trace(maxIter=trace_probes, tol=float("-inf")), self.n_hvp
        finally:
            PH_MODULE.hessian_vector_product = PH_HVP
            for p in self.model.parameters():
                p.grad = None
            self.model.eval()
        return sorted(values, reverse=True), self.n_hvp


def native(model, x, y, what: str, seed: int, trace_budget: int):
    op = HessianOperator(model, mse_loss, x, y)
    if what == "lambda1":
        r = lanczos(op, k=1, seed=seed)
        return r.eigenvalues.tolist(), r.n_matvec
    if what == "top5":
        r = lanczos(op, k=5, seed=seed)
        return r.eigenvalues.tolist(), r.n_matvec
    r = hutchinson_trace(op, n_probes=trace_budget, seed=seed, method="hutch++")
    return [r.estimate], r.n_matvec


def truth(model64, x64, y, kind: str, quick: bool):
    op = HessianOperator(model64, mse_loss, x64, y)
    if kind == "dense":
        evals = torch.linalg.eigvalsh(op.dense())
        return evals.flip(0)[:5].tolist(), float(evals.sum()), 0.0
    r = lanczos(op, k=5, tol=1e-10, max_iter=100 if quick else 400, seed=123)
    if not bool(r.converged.all()):
        print(f"  warning: reference Lanczos residuals {r.residuals.tolist()}", file=sys.stderr)
    tr = hutchinson_trace(op, n_probes=90 if quick else 1200, seed=321, method="hutch++")
    return r.eigenvalues.tolist(), tr.estimate, tr.stderr


def rel_err(values, ref) -> float:
    return max(abs(v - r) / abs(r) for v, r in zip(values, ref))


def run_case(name, settings, kind, args):
    ckpt = sharpcli.load_checkpoint(trained_checkpoint(f"spectrum-{name}", **settings))
    model = ckpt.model
    x, y = ckpt.data()[:2]
    n_params = sum(p.numel() for p in model.parameters())
    model64 = copy.deepcopy(model).double()
    ref_top, ref_trace, ref_trace_se = truth(model64, x.double(), y, kind, args.quick)
    print(f"{name}: {n_params} parameters, {len(x)} examples, λ = {ref_top}, "
          f"tr = {ref_trace:.6g} ± {ref_trace_se:.2g}", file=sys.stderr)
    ph = PyHessianRun(model, x, y)
    seeds = range(args.seeds)
    rows = []
    for what, ref, k in (("lambda1", ref_top[:1], 1), ("top5", ref_top[:5], 5),
                         ("trace", [ref_trace], 1)):
        results = {"native": [native(model, x, y, what, s, args.trace_budget) for s in seeds],
                   "pyhessian": [ph(what, s) for s in seeds]}
        times = interleaved({"native": lambda: native(model, x, y, what, 0, args.trace_budget),
                             "pyhessian": lambda: ph(what, 0)}, args.repeats)
        for method, res in results.items():
            errs = [rel_err(v[:k], ref) for v, _ in res]
            hvps = statistics.mean(n for _, n in res)
            rows.append([name, what, method, statistics.median(errs), max(errs), hvps,
                         times[method]])
        nat, pyh = rows[-2], rows[-1]
        rows.append([name, what, "native / pyhessian", nat[3] / pyh[3] if pyh[3] else float("nan"),
                     "", nat[5] / pyh[5], nat[6] / pyh[6]])
    sweep = trace_sweep(name, model, x, y, ref_trace, args.budgets, args.sweep_seeds)
    return n_params, len(x), ref_top, ref_trace, ref_trace_se, rows, sweep


def rms(errs) -> float:
    return (sum(e * e for e in errs) / len(errs)) ** 0.5


def trace_sweep(name, model, x, y, ref_trace, budgets, seeds):
    """RMS relative trace error over seeds against the HVP budget m: PyHessian's Hutchinson
    with exactly m probes (prefix means of one long run: what maxIter=m returns on the same
    RNG stream) and sharpcli's Hutch++ with a budget of m."""
    ph = PyHessianRun(model, x, y)
    op = HessianOperator(model, mse_loss, x, y)
    hutch = {m: [] for m in budgets}
    hpp = {m: [] for m in budgets}
    for s in range(seeds):
        vhv, _ = ph("trace", 1000 + s, trace_probes=max(budgets))
        for m in budgets:
            hutch[m].append((statistics.mean(vhv[:m]) - ref_trace) / ref_trace)
            est = hutchinson_trace(op, n_probes=m, seed=1000 + s, method="hutch++").estimate
            hpp[m].append((est - ref_trace) / ref_trace)
    rows = [[name, m, rms(hutch[m]), rms(hpp[m])] for m in budgets]

    def first_below(errs):
        return next((m for m in budgets if rms(errs[m]) <= 0.01), None)
    return rows, first_below(hutch), first_below(hpp)


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--sweep-seeds", type=int, default=10, help="seeds of the trace sweep")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the random starts/probes")
    p.add_argument("--trace-budget", type=int, default=30, help="Hutch++ matvec budget")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 80, 160, 320],
                   help="HVP budgets of the trace sweep")
    args = p.parse_args()
    setup(args.threads)
    cases = QUICK if args.quick else CASES
    out = [f"## 1. Spectrum: sharpcli against PyHessian\n",
           f"`{command_line()}` — {machine_line(args.threads)}\n",
           "Truth: " + "; ".join(f"{n} by {'dense eigvalsh' if k == 'dense' else 'float64 Lanczos tol 1e-10'}"
                                 for n, (_, k) in cases.items()) + ". "
           f"native: `lanczos(k, tol=1e-3, max_iter=100)` for eigenvalues, "
           f"`hutchinson_trace(method='hutch++', n_probes={args.trace_budget})` for the trace; "
           "pyhessian: `hessian(...).eigenvalues(top_n=k)` and `.trace()` with their defaults. "
           f"Errors: relative, max over the k values, median (and worst) over {args.seeds} seeds; "
           f"HVPs: mean over the seeds; seconds: median of {args.repeats} interleaved repeats.\n"]
    all_rows, sweep_rows, reach = [], [], []
    for name, (settings, kind) in cases.items():
        n_params, n_ex, ref_top, ref_trace, se, rows, sweep = run_case(name, settings, kind, args)
        sweep_rows += sweep[0]
        reach.append(f"{name}: PyHessian's Hutchinson {sweep[1] or '> ' + str(max(args.budgets))}, "
                     f"sharpcli's Hutch++ {sweep[2] or '> ' + str(max(args.budgets))}")
        out.append(f"- **{name}**: {n_params:,} parameters, {n_ex} examples (mnist1d), "
                   f"trained by `sharp train` {settings}; λ₁…λ₅ = "
                   + ", ".join(f"{v:.6g}" for v in ref_top)
                   + f"; trace = {ref_trace:.6g}" + (f" ± {se:.2g} (reference stderr)" if se else " (exact)"))
        all_rows += rows
    out.append("")
    out.append(table(["model", "quantity", "method", "rel. error (median)", "rel. error (worst)",
                      "HVPs", "seconds"], all_rows))
    out.append("\n### Trace error against the HVP budget\n")
    out.append(f"RMS relative error over {args.sweep_seeds} seeds with exactly m HVPs. "
               "HVPs to reach 1% RMS error — " + "; ".join(reach) + ".\n")
    out.append(table(["model", "HVPs m", "PyHessian Hutchinson", "sharpcli Hutch++"], sweep_rows))
    write_section("spectrum" + ("-quick" if args.quick else ""), "\n".join(out))


if __name__ == "__main__":
    main()
