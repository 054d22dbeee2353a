"""Lanczos (with deflation restarts) against dense eigenvalues on the test models.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_lanczos_accuracy.py
Prints, for a small MLP and CNN (mse/ce, float64/float32, unequal chunks of 7 of 23
examples), the largest relative error of the top-5 eigenvalues and of λ₁ at two tolerances.
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sharpcli.hessian import HessianOperator  # noqa: E402
from sharpcli.linalg import lanczos_top_k
from tests.cases import CASES
from tests.helpers import dense_hessian
torch.set_num_threads(1)
for case in CASES:  # mlp and cnn, mse and ce, 23 examples: the tests' shared cases
    kind, lname = case.name.split("-")
    for dtype in (torch.float64, torch.float32):
        m, lf, x, y = case(dtype=dtype)
        truth = torch.linalg.eigvalsh(dense_hessian(m.double(), lf, x.double(), y)).flip(0)[:5]
        m = m.to(dtype)
        for tol in (1e-3, 1e-6):
            op = HessianOperator(m, lf, x, y, chunk_size=7)
            r = lanczos_top_k(op, 5, tol=tol, max_iter=200)
            err = ((r.eigenvalues - truth).abs() / truth.abs()).max().item()
            print(f"{kind} {lname} {str(dtype)[6:]} n={op.size} tol={tol:g}: max rel err top-5 {err:.1e}, λ₁ err {abs(r.eigenvalues[0]-truth[0]).item()/truth[0].item():.1e}, HVPs {r.n_matvec}")
