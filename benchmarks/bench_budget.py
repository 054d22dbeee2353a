"""Products for the top-5 at several memory budgets (issue 21): thick-restart Lanczos within
`max_memory` against the unbudgeted solvers, on the Hessian of mlp-0.3M (276,010 parameters,
the model of RESULTS.md §1) and on a diagonal operator of the same size with its five top
values. Budgets in vectors of the operator's size (float32: 1.1 MB each).

    python benchmarks/bench_budget.py [--threads 1] [--quick]
"""

from __future__ import annotations

import time

import torch

import sharpcli
from common import base_parser, setup, trained_checkpoint
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import LinalgInputError, block_lanczos, lanczos, lanczos_top_k
from sharpcli.hessian.losses import mse_loss

TOP5 = [20.6416, 19.8959, 19.7254, 19.6644, 19.5426]  # mlp-0.3M, float64 Lanczos tol 1e-10
BUDGETS = (None, 5, 8, 10, 20, 100)
SOLVERS = {"lanczos (one run)": lambda op, m: lanczos(op, 5, max_iter=5000, max_memory=m),
           "lanczos_top_k": lambda op, m: lanczos_top_k(op, 5, max_iter=5000, max_memory=m),
           "block (b=5)": lambda op, m: block_lanczos(op, 5, max_iter=5000, max_memory=m)}


class Counted:
    """An operator that counts its products (columns of a block included)."""

    def __init__(self, op):
        self.op, self.size, self.dtype, self.device, self.n = op, op.size, op.dtype, op.device, 0

    def matvec(self, v):
        self.n += 1
        return self.op.matvec(v)

    def matmat(self, vs):
        self.n += vs.shape[1]
        return self.op.matmat(vs) if hasattr(self.op, "matmat") else torch.stack(
            [self.op.matvec(v) for v in vs.T], dim=1)


class Diagonal:
    def __init__(self, d):
        self.d, self.size, self.dtype, self.device = d, len(d), d.dtype, d.device

    def matvec(self, v):
        return self.d * v

    def matmat(self, vs):
        return self.d[:, None] * vs


def diagonal_like(n: int) -> Diagonal:
    """mlp-0.3M's top five, then a decaying bulk below them (the Hessian's trace is 1354)."""
    g = torch.Generator().manual_seed(0)
    bulk = 15.0 * torch.arange(1, n - 5 - 2000 + 1, dtype=torch.float64) ** -0.7
    d = torch.cat([torch.tensor(TOP5, dtype=torch.float64), bulk,
                   -0.5 * torch.rand(2000, generator=g, dtype=torch.float64)])
    return Diagonal(d[torch.randperm(n, generator=g)].float())


def run(name: str, op, seeds: int) -> None:
    bytes_per_vector = op.size * torch.empty((), dtype=op.dtype).element_size()
    for label, solve in SOLVERS.items():
        for budget in BUDGETS:
            counted = Counted(op)
            cells = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                try:
                    r = solve(counted, None if budget is None else budget * bytes_per_vector)
                except LinalgInputError as err:
                    cells = [str(err).split(":")[0]]
                    break
                err = max(abs(a - b) / b for a, b in zip(r.eigenvalues.tolist(), TOP5))
                cells.append(f"{r.n_matvec} products, {r.restarts} restarts, rel. error {err:.1e}, "
                             f"converged {bool(r.converged.all())}, {time.perf_counter() - t0:.1f} s")
            print(f"{name} | {label} | {budget or 'none'} | " + " / ".join(cells), flush=True)


def main() -> None:
    parser = base_parser(__doc__)
    args = parser.parse_args()
    setup(args.threads)
    run("diagonal 276k", diagonal_like(276_010), 1)
    path = trained_checkpoint("spectrum-mlp-0.3M", model="mlp", width=500, depth=2, lr=0.1, steps=800)
    ckpt = sharpcli.load_checkpoint(path)
    x, y = ckpt.data()[:2]
    run("mlp-0.3M", HessianOperator(ckpt.model, mse_loss, x, y), 1)


if __name__ == "__main__":
    main()
