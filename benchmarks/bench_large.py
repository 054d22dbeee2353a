"""A 26M-parameter GPT within a memory budget (issue 21): the top-5 of its Hessian by what
`sharp spectrum --top-k 5 --tol 1e-4 [--max-memory SIZE]` runs (lanczos_top_k, its check
for missed eigenvalues included), each budget in a fresh process whose peak resident memory
(ru_maxrss) is read after the solve; the eigenvalues against the unbudgeted run's, their
certified residuals against true ones (one more product per vector, outside the count); and
the memory per process those measurements imply for 124M, 355M and 1.3B parameters.

    OMP_NUM_THREADS=2 python benchmarks/bench_large.py --threads 2 [--budgets none 100 20 14 10]
    python benchmarks/bench_large.py --quick        # a 0.4M model, to check the script

Each run appends a JSON line to benchmarks/out/large.jsonl as it finishes (a long session
can be resumed with --resume); the section goes to benchmarks/out/large.md.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch

from common import OUT, base_parser, machine_line, setup

GiB = 2**30
SCALES = {"124M": 124e6, "355M": 355e6, "1.3B": 1.3e9}
TABLE_BUDGETS = (5, 20, 100)   # vectors, the issue's
TOL, K = 1e-4, 5


def rss() -> int:
    """Peak resident memory of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_run(budget: str, args) -> dict:
    """One budget in this (fresh) process: memory at each stage, the solve, true residuals."""
    from gpt import make_gpt, next_token_loss, token_batch
    from sharpcli.hessian import HessianOperator
    from sharpcli.hessian.params import full_precision
    from sharpcli.linalg import lanczos_top_k
    from sharpcli.spectra.compute import BUDGETED_MAX_ITER

    setup(args.threads)
    after_imports = rss()
    sizes = dict(width=64, layers=2, heads=4, vocab=1024) if args.quick else {}
    model = make_gpt(**sizes)
    x, y = token_batch(model.transformer.wte.num_embeddings, args.sequences, args.length)
    after_model = rss()
    with full_precision():
        op = HessianOperator(model, next_token_loss, x, y)
        t0 = time.perf_counter()
        w = op.matvec(torch.randn(op.size, generator=torch.Generator().manual_seed(9)))
        product_s = time.perf_counter() - t0
        del w
        after_operator = rss()
        vector = op.size * 4
        memory = None if budget == "none" else int(budget) * vector
        t0 = time.perf_counter()
        res = lanczos_top_k(op, K, tol=TOL, max_iter=100 if memory is None else BUDGETED_MAX_ITER,
                            max_memory=memory)
        seconds = time.perf_counter() - t0
        peak = rss()
        true = []
        for i in range(K):  # ‖Hv − θv‖ of each returned pair, outside the solve's count
            v = res.eigenvectors[:, i].contiguous()
            true.append(float((op.matvec(v) - float(res.eigenvalues[i]) * v).norm()))
    return {"budget": budget, "params": op.size, "vector_bytes": vector,
            "tokens": args.sequences * args.length, "threads": args.threads,
            "rss_imports": after_imports, "rss_model": after_model,
            "rss_operator": after_operator, "rss_peak": peak, "product_s": product_s,
            "seconds": seconds, "n_hvp": res.n_matvec, "restarts": res.restarts,
            "basis_vectors": res.basis_vectors, "eigenvalues": res.eigenvalues.tolist(),
            "residuals": res.residuals.tolist(), "true_residuals": true,
            "converged": res.converged.tolist(), "machine": machine_line(args.threads)}


def run_all(args) -> list[dict]:
    path = OUT / ("large-quick.jsonl" if args.quick else "large.jsonl")
    OUT.mkdir(exist_ok=True)
    done = [json.loads(line) for line in path.read_text().splitlines()] if args.resume and path.exists() else []
    if not args.resume:
        path.write_text("")
    for budget in args.budgets:
        if any(r["budget"] == budget for r in done):
            continue
        cmd = [sys.executable, __file__, "--one", budget, "--threads", str(args.threads),
               "--sequences", str(args.sequences), "--length", str(args.length)]
        cmd += ["--quick"] if args.quick else []
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - t0
        done.append(row)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  budget {budget}: {row['n_hvp']} products, {row['seconds']:.0f} s, peak "
              f"{row['rss_peak'] / GiB:.2f} GiB", file=sys.stderr, flush=True)
    return done


def model_of_memory(runs: list[dict]) -> tuple[float, float]:
    """(fixed bytes, bytes per parameter) of a process before any solver: the imports, and
    the model, data, operator and one product over the parameters (measured at one size,
    so activations count as per-parameter: an overestimate for wider models)."""
    r = runs[0]
    return r["rss_imports"], (r["rss_operator"] - r["rss_imports"]) / r["params"]


def section(runs: list[dict], args) -> str:
    ref = next(r for r in runs if r["budget"] == "none")
    fixed, per_param = model_of_memory(runs)
    p, vb = ref["params"], ref["vector_bytes"]
    lines = ["## 9. Large models: a 26M GPT within a memory budget\n",
             f"`OMP_NUM_THREADS={args.threads} python benchmarks/bench_large.py --threads "
             f"{args.threads} --budgets {' '.join(args.budgets)}` — {ref['machine']}\n",
             f"benchmarks/gpt.py's GPT25M ({p:,} parameters, GPT-2's layout: vocabulary 8192, "
             f"width 512, 7 layers; float32) at initialisation, on {ref['tokens']} random "
             f"tokens ({args.sequences} sequences of {args.length}); top-{K} by "
             f"`lanczos_top_k(op, {K}, tol={TOL})` (the default `sharp spectrum` solver, its "
             f"check included), each budget in a fresh process; a vector is {vb / 1e6:.1f} MB. "
             "Peak RSS: ru_maxrss after the solve; before it the process held "
             f"{ref['rss_operator'] / GiB:.2f} GiB (imports {ref['rss_imports'] / GiB:.2f}, "
             f"model and data, the operator's cached graph and one product). True residuals: "
             "‖Hv − θv‖ of the returned vectors, one more product each.\n",
             "| budget | basis held | products | restarts | seconds | s per product | peak RSS GiB "
             "| solver's extra GiB | max rel. Δλ vs unbudgeted | max certified residual "
             "| max true residual |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lam = torch.tensor(ref["eigenvalues"], dtype=torch.float64)
    for r in runs:
        dl = float(((torch.tensor(r["eigenvalues"], dtype=torch.float64) - lam).abs() / lam.abs()).max())
        budget = "none" if r["budget"] == "none" else \
            f"{r['budget']} vectors ({int(r['budget']) * vb / 1e9:.2g} GB)"
        held = r["basis_vectors"] if r["basis_vectors"] is not None else "all (up to 100 + 2k + 4)"
        lines.append(f"| {budget} | {held} | {r['n_hvp']} | {r['restarts']} | {r['seconds']:.0f} "
                     f"| {r['seconds'] / r['n_hvp']:.2f} | {r['rss_peak'] / GiB:.2f} "
                     f"| {(r['rss_peak'] - r['rss_operator']) / GiB:.2f} | {dl:.1e} "
                     f"| {max(r['residuals']):.1e} | {max(r['true_residuals']):.1e} |")
    lines += ["", f"λ₁…λ₅ unbudgeted: {', '.join(f'{v:.6g}' for v in ref['eigenvalues'])}.", "",
              f"**Memory per process** from these measurements: {fixed / GiB:.2f} GiB fixed "
              f"(Python, torch) plus {per_param:.0f} B per parameter for the model, the data and "
              f"the operator with one product at {ref['tokens']} tokens, plus the budget "
              "(4 B per parameter per vector); GiB:", "",
              "| parameters | budget 5 vectors | budget 20 vectors | budget 100 vectors |",
              "|---|---|---|---|"]
    scales = {"26M (measured)": p, **SCALES}
    for name, n in scales.items():
        cells = [f"{(fixed + per_param * n + c * 4 * n) / GiB:.1f}" for c in TABLE_BUDGETS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| card | budget 5 vectors | budget 20 vectors | budget 100 vectors |",
              "|---|---|---|---|"]
    for card, size in (("24 GiB", 24 * GiB), ("80 GiB", 80 * GiB)):
        cells = [f"{(size - fixed) / (per_param + 4 * c) / 1e6:.0f}M" for c in TABLE_BUDGETS]
        lines.append(f"| largest model in {card} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--budgets", nargs="+", default=["none", "100", "20", "14", "10"],
                   help="'none' or a number of vectors of the model's size")
    p.add_argument("--sequences", type=int, default=2)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--one", help=argparse_hidden())
    p.add_argument("--resume", action="store_true", help="keep the runs already in large.jsonl")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args)))
        return
    runs = run_all(args)
    text = section(runs, args)
    (OUT / ("large-quick.md" if args.quick else "large.md")).write_text(text)
    print(text)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
