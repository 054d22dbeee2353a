"""Spectrum accuracy and cost: sharpcli's solvers against PyHessian on the same checkpoint,
data, device (CPU) and thread count.

For each checkpoint: λ₁, the top 5 and the trace, each by sharpcli exactly as `sharp spectrum`
computes them (eigenvalues: `lanczos_top_k`, Lanczos plus its restart check for missed
eigenvalues, tol 1e-3; trace: the default `--trace-method auto`, i.e. the exact Gauss–Newton
trace plus Hutchinson on the remainder, at most 100 probes, stopping once its standard
error is below 0.3% of the trace), by PyHessian 0.1
with its defaults (power iteration with deflation, tol 1e-3, at most 100 products per
eigenvalue; Hutchinson, tol 1e-3, at most 100 probes), called directly, and by curvlinops'
HessianLinearOperator under scipy's eigsh (ARPACK, which="LA", tol 1e-3: the residual
tolerance sharpcli uses). sharpcli's other methods are listed too: a single Lanczos run
without the restart check (`--no-check-missed`) and block Lanczos (`--method block`).
The density is SLQ with the defaults (5 runs of 80 steps), its runs stepped together (one
block of products per step) against one run at a time. Errors are relative, against
- the dense Hessian (float64, eigvalsh) for the small MLP;
- a tightly converged Lanczos (float64, residual tol 1e-10) for the larger ones, and for the
  trace a float64 Hutch++ with a budget of 1200 products (its standard error is quoted).
  These references share no code path with the Gauss–Newton estimator.
Both sides run in float32 on the model as trained, with a cached gradient graph (one chunk
of all examples). HVPs are counted by wrapping each library's product; wall times include
building the operator (the forward and backward with create_graph) and, for the
Gauss–Newton trace, its Jacobian pass and one forward-mode product per probe. Each seed's
calls are timed back to back (sharpcli, PyHessian, curvlinops), after one untimed warm-up of
each; seconds are medians over the seeds.

Two more tables say what limits the cost. Floors: from one Lanczos run (float32, as
shipped), the number of products after which λ₁ (or all of the top 5) first lie within 1e-4
of the truth, an oracle stop that no stopping rule can beat from that start, and its wall
time (those products at the median product time, plus building the operator). Overhead: one
product by PyHessian's own function on its graph against sharpcli's operator on the same
weights, and one Lanczos step's reorthogonalisation against a basis of 50 vectors, with the
classical Gram–Schmidt pass always repeated (the previous code) and repeated only when the
first pass cancelled most of the vector (now).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from common import (WORK, base_parser, command_line, interleaved, machine_line, setup, table,
                    trained_checkpoint, write_section)
import sharpcli
from sharpcli.hessian.ggn import GaussNewtonPart
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import (control_variate_trace, hutchinson_trace, lanczos,
                             lanczos_top_k, slq_density)
from sharpcli.linalg.lanczos import LanczosProcess
from sharpcli.linalg.projection import project_out
from sharpcli.spectra.problem import Stoppable
from sharpcli.hessian.losses import mse_loss
from sharpcli.spectra.config import SpectrumConfig

DEFAULTS = SpectrumConfig()  # the flags' defaults: the benchmark measures what users get

# pyhessian/__init__.py rebinds the name `pyhessian.hessian` to the class, hiding the
# module: its module-level hessian_vector_product is reached through sys.modules.
import pyhessian  # noqa: E402
PH_MODULE = sys.modules["pyhessian.hessian"]
PH_HVP = PH_MODULE.hessian_vector_product

CASES = {
    # name: (settings of the training run, truth)
    "mlp-5k": (dict(model="mlp", width=50, depth=2, lr=0.3, steps=300), "dense"),
    # at the edge: 2/η = 20 and λ₁ = 20.6 with four more eigenvalues within 5% below it
    "mlp-0.3M": (dict(model="mlp", width=500, depth=2, lr=0.1, steps=800), "lanczos"),
    "cnn-20k": (dict(model="cnn", width=64, depth=2, lr=0.1, steps=200), "lanczos"),
}
QUICK = {
    "mlp-5k": (dict(model="mlp", width=20, depth=1, lr=0.3, steps=50, train_size=200), "dense"),
    "cnn-6k": (dict(model="cnn", width=16, depth=2, lr=0.1, steps=50, train_size=200), "lanczos"),
}


class MSECriterion(nn.Module):
    """Our loss as the torch loss module PyHessian and curvlinops want: 0.5‖f − onehot(y)‖²,
    mean over examples (curvlinops reads `reduction` to weight its batches)."""

    reduction = "mean"

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


def native(model, x, y, what: str, seed: int):
    """What `sharp spectrum` runs (sharpcli.spectra.compute), on the same operator."""
    op = HessianOperator(model, mse_loss, x, y)
    k = 1 if what.startswith("lambda1") else 5
    if what in ("lambda1", "top5"):  # sharpcli.eigs as sharp spectrum calls it
        r = sharpcli.eigs(op, k, tol=DEFAULTS.tol, seed=seed)
        return r.values.tolist(), r.products
    if what.endswith("(one Lanczos run)"):  # sharp spectrum --no-check-missed
        r = sharpcli.eigs(op, k, tol=DEFAULTS.tol, check_missed=False, seed=seed)
        return r.values.tolist(), r.products
    if what.endswith("(block Lanczos)"):  # sharp spectrum --method block
        r = sharpcli.eigs(op, k, tol=DEFAULTS.tol, method="block", seed=seed)
        return r.values.tolist(), r.products
    if what == "density":  # the runs stepped together; their products, one block per step
        r = slq_density(op, n_runs=DEFAULTS.density_runs, n_iter=DEFAULTS.density_iters, seed=seed)
        return [float("nan")], r.n_matvec
    if what == "density, one run at a time":
        n = sum(slq_density(op, n_runs=1, n_iter=DEFAULTS.density_iters, seed=seed + 1000 * i).n_matvec
                for i in range(DEFAULTS.density_runs))
        return [float("nan")], n
    part = GaussNewtonPart(model, mse_loss, x, y)
    r = control_variate_trace(op, part.trace(), part.quadratic_form,
                              n_probes=DEFAULTS.trace_probes, tol=DEFAULTS.native_trace_tol, seed=seed)
    return [r.estimate], r.n_matvec


def curvlinops_eigsh(model, x, y, k: int, seed: int, tol: float = 1e-3):
    """The top k by scipy's eigsh (ARPACK) on curvlinops' HessianLinearOperator; products
    counted at the scipy operator. Imported here: curvlinops is a benchmark-only peer
    (pip install '.[bench]')."""
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    h = HessianLinearOperator(model, MSECriterion(), params, [(x, y)],
                              check_deterministic=False).to_scipy()
    count = [0]

    def product(v):
        count[0] += 1 if v.ndim == 1 else v.shape[1]
        return h @ v

    op = LinearOperator(h.shape, matvec=product, matmat=product, dtype=np.float32)
    v0 = np.random.default_rng(seed).standard_normal(h.shape[0]).astype(np.float32)
    values = eigsh(op, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return sorted(values.tolist(), reverse=True), count[0]


def truth(model64, x64, y, kind: str, quick: bool, cache: str):
    """λ₁…λ₅ and the trace with its standard error, cached per checkpoint as JSON."""
    path = WORK / f"reference-{cache}{'-quick' if quick else ''}.json"
    if path.exists():
        ref = json.loads(path.read_text())
        return ref["top"], ref["trace"], ref["trace_stderr"]
    op = HessianOperator(model64, mse_loss, x64, y)
    if kind == "dense":
        evals = torch.linalg.eigvalsh(op.dense())
        top, tr, se = evals.flip(0)[:5].tolist(), float(evals.sum()), 0.0
    else:
        # with the restart check: a cluster at the edge must not lose a member
        r = lanczos_top_k(op, 5, tol=1e-10, max_iter=100 if quick else 400, seed=123)
        if not bool(r.converged.all()):
            print(f"  warning: reference Lanczos residuals {r.residuals.tolist()}", file=sys.stderr)
        t = hutchinson_trace(op, n_probes=90 if quick else 1200, seed=321, method="hutch++")
        top, tr, se = r.eigenvalues.tolist(), t.estimate, t.stderr
    path.write_text(json.dumps({"top": top, "trace": tr, "trace_stderr": se, "kind": kind}))
    return top, tr, se


def rel_err(values, ref) -> float:
    return max(abs(v - r) / abs(r) for v, r in zip(values, ref))


QUANTITIES = (("lambda1", 1), ("lambda1 (one Lanczos run)", 1), ("top5", 5),
              ("top5 (one Lanczos run)", 5), ("top5 (block Lanczos)", 5), ("trace", 1),
              ("density", 0), ("density, one run at a time", 0))
PEERS = {"lambda1": ("pyhessian", "curvlinops"), "top5": ("pyhessian", "curvlinops"),
         "trace": ("pyhessian",)}
TOLS = (1e-2, 3e-3, 1e-3, 1e-4)


def tolerance_sweep(name, model, x, y, ref_top, seeds):
    """Top-5 by one Lanczos run and by lanczos_top_k at several residual tolerances: HVPs
    against the eigenvalues' relative error (median and worst over seeds)."""
    op = HessianOperator(model, mse_loss, x, y)
    rows = []
    for tol in TOLS:
        for label, solve in (("one run", lambda s: lanczos(op, 5, tol=tol, max_iter=200, seed=s)),
                             ("with check", lambda s: lanczos_top_k(op, 5, tol=tol, max_iter=200, seed=s))):
            res = [solve(s) for s in range(seeds)]
            errs = [rel_err(r.eigenvalues.tolist(), ref_top[:5]) for r in res]
            rows.append([name, tol, label, statistics.median(errs), max(errs),
                         statistics.mean(r.n_matvec for r in res)])
    return rows


def run_case(name, settings, kind, args):
    path = trained_checkpoint(f"spectrum-{name}", **settings)
    ckpt = sharpcli.load_checkpoint(path)
    model = ckpt.model
    x, y = ckpt.data()[:2]
    n_params = sum(p.numel() for p in model.parameters())
    model64 = copy.deepcopy(model).double()
    ref_top, ref_trace, ref_trace_se = truth(model64, x.double(), y, kind, args.quick,
                                             path.parent.name)
    print(f"{name}: {n_params} parameters, {len(x)} examples, λ = {ref_top}, "
          f"tr = {ref_trace:.6g} ± {ref_trace_se:.2g}", file=sys.stderr)
    ph = PyHessianRun(model, x, y)
    native(model, x, y, "trace", 0)  # warm-ups: torch.func's first call sets itself up
    ph("lambda1", 0)
    curvlinops_eigsh(model, x, y, 1, 0)
    solvers = {"native": lambda what, s: native(model, x, y, what, s),
               "pyhessian": lambda what, s: ph(what, s),
               "curvlinops": lambda what, s: curvlinops_eigsh(model, x, y, 1 if what == "lambda1" else 5, s)}
    rows = []
    for what, k in QUANTITIES:
        ref = [ref_trace] if what == "trace" else ref_top[:k]
        methods = ("native",) + PEERS.get(what, ())
        res = {m: [] for m in methods}
        secs = {m: [] for m in methods}
        for s in range(args.seeds):
            for method in methods:
                t0 = time.perf_counter()
                out = solvers[method](what, s)
                secs[method].append(time.perf_counter() - t0)
                res[method].append(out)
        print(f"  {what}: native {statistics.mean(n for _, n in res['native']):.1f} HVPs, "
              f"{statistics.median(secs['native']):.3g} s", file=sys.stderr)
        got = {}
        for method in methods:
            errs = [rel_err(v[:k], ref) for v, _ in res[method]] if k else [float("nan")]
            got[method] = [name, what, method, statistics.median(errs), max(errs),
                           statistics.mean(n for _, n in res[method]), statistics.median(secs[method])]
            rows.append(got[method])
        for peer in methods[1:]:
            nat, other = got["native"], got[peer]
            rows.append([name, what, f"native / {peer}", nat[3] / other[3] if other[3] else float("nan"),
                         "", nat[5] / other[5], nat[6] / other[6]])
    sweep = trace_sweep(name, model, x, y, ref_trace, args.budgets, args.sweep_seeds)
    tols = tolerance_sweep(name, model, x, y, ref_top, args.seeds)
    pyh_secs = {what: row[6] for row in rows if row[2] == "pyhessian" for what in [row[1]]}
    floor = floors(name, model, x, y, ref_top, args.seeds, pyh_secs)
    profile = overhead(name, model, x, y, args.repeats)
    return n_params, len(x), ref_top, ref_trace, ref_trace_se, rows, sweep, tols, floor, profile


def floors(name, model, x, y, ref_top, seeds, pyh_secs):
    """Products after which one Lanczos run's top 1 / top 5 Ritz values first lie within
    1e-4 of the truth (an oracle stop), and the wall time that many products take."""
    op = HessianOperator(model, mse_loss, x, y)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0))
    t = interleaved({"product": lambda: op.matvec(v),
                     "operator": lambda: HessianOperator(model, mse_loss, x, y)}, 5)
    rows = []
    for k, what in ((1, "lambda1"), (5, "top5")):
        counts = []
        for s in range(seeds):
            gen = torch.Generator().manual_seed(s)
            start = torch.randn(op.size, generator=gen)
            proc = LanczosProcess(op, start / start.norm(), min(200, op.size))
            while proc.m < proc.max_steps:
                proc.step()
                if proc.broke_down:
                    proc.restart(gen)
                if proc.m >= k and rel_err(proc.ritz(k)[0][:k].tolist(), ref_top[:k]) <= 1e-4:
                    break
            counts.append(proc.m)
        n = statistics.mean(counts)
        seconds = n * t["product"] + t["operator"]
        rows.append([name, what, n, max(counts), t["product"] * 1e3, seconds,
                     seconds / pyh_secs[what] if what in pyh_secs else float("nan")])
    return rows


def overhead(name, model, x, y, repeats):
    """ms per product: PyHessian's function on its graph, autograd.grad on the same graph,
    sharpcli's operator (alone and behind the stop check); ms per reorthogonalisation of
    one Lanczos step against 50 basis vectors, always twice (before) and as needed (now)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(mse_loss(model(x), y), params, create_graph=True)
    op = HessianOperator(model, mse_loss, x, y)
    stoppable = Stoppable(op, lambda: False)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.size, generator=gen)
    vs = [t.view_as(p) for t, p in zip(torch.split(v.clone(), [p.numel() for p in params]), params)]
    basis = torch.linalg.qr(torch.randn(op.size, 50, generator=gen))[0].T.contiguous()
    w = op.matvec(basis[-1])

    def pyhessian_product():
        hv = PH_MODULE.hessian_vector_product(grads, params, vs)
        return PH_MODULE.group_product(hv, vs).cpu().item()

    def twice():
        u = w
        for _ in range(2):
            u = u - basis.T @ (basis @ u)
        return u

    t = interleaved({
        "PyHessian hessian_vector_product + dot, its graph": pyhessian_product,
        "autograd.grad on the same graph": lambda: torch.autograd.grad(grads, params, grad_outputs=vs,
                                                                     retain_graph=True),
        "HessianOperator.matvec": lambda: op.matvec(v),
        "Stoppable(HessianOperator).matvec (sharp spectrum)": lambda: stoppable.matvec(v),
        "reorthogonalisation, 50 vectors: twice always (before)": twice,
        "reorthogonalisation, 50 vectors: second pass as needed (now)": lambda: project_out(w, basis),
    }, max(repeats, 5), warmup=2)
    return [[name, k, ms * 1e3] for k, ms in t.items()]


def rms(errs) -> float:
    return (sum(e * e for e in errs) / len(errs)) ** 0.5


def trace_sweep(name, model, x, y, ref_trace, budgets, seeds):
    """RMS relative trace error over seeds against the number of probes m: PyHessian's
    Hutchinson with exactly m probes (prefix means of one long run: what maxIter=m returns
    on the same RNG stream), sharpcli's Hutch++ with a budget of m HVPs, and sharpcli's
    Gauss–Newton estimator with m probes (prefix means likewise; m HVPs plus m forward-mode
    products plus one Jacobian pass)."""
    ph = PyHessianRun(model, x, y)
    op = HessianOperator(model, mse_loss, x, y)
    part = GaussNewtonPart(model, mse_loss, x, y)
    t0 = time.perf_counter()
    tr_g = part.trace()
    jacobian_seconds = time.perf_counter() - t0
    errs = {key: {m: [] for m in budgets} for key in ("hutch", "hpp", "gn")}
    for s in range(seeds):
        vhv, _ = ph("trace", 1000 + s, trace_probes=max(budgets))
        gn = control_variate_trace(op, tr_g, part.quadratic_form, n_probes=max(budgets),
                                   seed=1000 + s)
        for m in budgets:
            errs["hutch"][m].append((statistics.mean(vhv[:m]) - ref_trace) / ref_trace)
            est = hutchinson_trace(op, n_probes=m, seed=1000 + s, method="hutch++").estimate
            errs["hpp"][m].append((est - ref_trace) / ref_trace)
            errs["gn"][m].append((tr_g + statistics.mean(gn.samples[:m]) - ref_trace) / ref_trace)
    rows = [[name, m] + [rms(errs[key][m]) for key in ("hutch", "hpp", "gn")] for m in budgets]

    def first_below(e):
        return next((m for m in budgets if rms(e[m]) <= 0.01), None)
    exact_g = (tr_g - ref_trace) / ref_trace
    return rows, [first_below(errs[key]) for key in ("hutch", "hpp", "gn")], exact_g, jacobian_seconds


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--sweep-seeds", type=int, default=4, help="seeds of the trace sweep")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the random starts/probes")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 80],
                   help="probe counts of the trace sweep")
    p.add_argument("--only", nargs="+", metavar="CASE", help="run only these cases")
    args = p.parse_args()
    setup(args.threads)
    cases = QUICK if args.quick else CASES
    if args.only:
        cases = {n: cases[n] for n in args.only}
    out = [f"## 1. Spectrum: sharpcli against PyHessian\n",
           f"`{command_line()}` — {machine_line(args.threads)}\n",
           "Truth: " + "; ".join(f"{n} by {'dense eigvalsh' if k == 'dense' else 'float64 Lanczos tol 1e-10'}"
                                 for n, (_, k) in cases.items()) + ". "
           "native: what `sharp spectrum` runs — `lanczos_top_k(op, k, tol=1e-3)` (Lanczos plus "
           "its restart check) for eigenvalues; for the trace `--trace-method auto`: exact "
           "Gauss–Newton trace plus `control_variate_trace` on the remainder (≤ "
           f"{DEFAULTS.trace_probes} probes, tol {DEFAULTS.native_trace_tol}). \"(one Lanczos run)\" rows are `lanczos(op, k, tol=1e-3)` without the check (`sharp spectrum --no-check-missed`); \"(block Lanczos)\" `block_lanczos(op, k, tol=1e-3)`, blocks of k (`--method block`); density: `slq_density` with 5 runs of 80 steps (no truth: its HVPs and seconds only). "
           "pyhessian: `hessian(...).eigenvalues(top_n=k)` and `.trace()` with their defaults. "
           "curvlinops: `eigsh(HessianLinearOperator(...).to_scipy(), k, which='LA', tol=1e-3)`. "
           f"Errors: relative, max over the k values, median (and worst) over {args.seeds} seeds; "
           "HVPs: mean over the seeds (the Gauss–Newton trace also spends one Jacobian pass and "
           "one forward-mode product per probe: they are in its seconds, not its HVPs); seconds: "
           "median over the seeds, each seed's calls timed back to back.\n"]
    all_rows, sweep_rows, reach, tol_rows, floor_rows, profile_rows = [], [], [], [], [], []
    for name, (settings, kind) in cases.items():
        (n_params, n_ex, ref_top, ref_trace, se, rows, sweep, tols, floor,
         profile) = run_case(name, settings, kind, args)
        tol_rows += tols
        floor_rows += floor
        profile_rows += profile
        sweep_rows += sweep[0]
        top = max(args.budgets)
        hutch, hpp, gn = (str(m) if m else f"> {top}" for m in sweep[1])
        reach.append(f"{name}: PyHessian's Hutchinson {hutch}, sharpcli's Hutch++ {hpp}, "
                     f"Gauss–Newton {gn} (its exact tr G alone is off by {sweep[2]:+.2%}; the "
                     f"Jacobian pass took {sweep[3]:.3g} s)")
        out.append(f"- **{name}**: {n_params:,} parameters, {n_ex} examples (mnist1d), "
                   f"trained by `sharp train` {settings}; λ₁…λ₅ = "
                   + ", ".join(f"{v:.6g}" for v in ref_top)
                   + f"; trace = {ref_trace:.6g}" + (f" ± {se:.2g} (reference stderr)" if se else " (exact)"))
        all_rows += rows
    out.append("")
    out.append(table(["model", "quantity", "method", "rel. error (median)", "rel. error (worst)",
                      "HVPs", "seconds"], all_rows))
    out.append("\n### Trace error against the number of probes\n")
    out.append(f"RMS relative error over {args.sweep_seeds} seeds with exactly m probes (one HVP "
               "each; Hutch++: a budget of m HVPs). Probes to reach 1% RMS error — "
               + "; ".join(reach) + ".\n")
    out.append(table(["model", "probes m", "PyHessian Hutchinson", "sharpcli Hutch++",
                      "sharpcli Gauss–Newton"], sweep_rows))
    out.append("\n### Top-5 cost against Lanczos's residual tolerance\n")
    out.append(f"`lanczos(op, 5, tol)` (one run) and `lanczos_top_k(op, 5, tol)` (with the check), "
               f"max_iter 200; relative error of the worst of the five, median and worst over "
               f"{args.seeds} seeds; HVPs: mean. The default is tol 1e-3 with the check.\n")
    out.append(table(["model", "tol", "solver", "rel. error (median)", "rel. error (worst)", "HVPs"],
                     tol_rows))
    out.append("\n### What limits the cost: products at the floor\n")
    out.append("One Lanczos run (float32, random start) stopped by an oracle at the first product "
               "after which λ₁ (top5: all five) lie within 1e-4 of the truth; products mean and "
               f"worst over {args.seeds} seeds; seconds = that many products at the median product "
               "time plus building the operator; the last column divides by PyHessian's median "
               "time for the same quantity (table above). No stopping rule does better from a "
               "cold start, and on this CPU a product costs what PyHessian's does (next table).\n")
    out.append(table(["model", "quantity", "products (oracle)", "worst", "ms per product",
                      "seconds at the floor", "÷ PyHessian's seconds"], floor_rows))
    out.append("\n### What limits the cost: overhead around the product\n")
    out.append("ms per call, medians of interleaved repeats, on each checkpoint's weights.\n")
    out.append(table(["model", "call", "ms"], profile_rows))
    write_section("spectrum" + ("-quick" if args.quick else ""), "\n".join(out))


if __name__ == "__main__":
    main()
