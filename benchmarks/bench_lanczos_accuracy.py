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
from sharpcli.hessian.losses import mse_loss, ce_loss
from tests.helpers import dense_hessian, tiny_mlp, tiny_cnn
torch.set_num_threads(1)
g = torch.Generator().manual_seed(1)
for kind in ("mlp", "cnn"):
    for dtype in (torch.float64, torch.float32):
        for lname, lf in (("mse", mse_loss), ("ce", ce_loss)):
            m = (tiny_mlp() if kind == "mlp" else tiny_cnn()).to(dtype)
            x = torch.randn((23, 6) if kind == "mlp" else (23, 1, 6, 6), generator=g).to(dtype)
            y = torch.randint(0, 3, (23,), generator=g)
            truth = torch.linalg.eigvalsh(dense_hessian(m.double(), lf, x.double(), y)).flip(0)[:5]
            m = m.to(dtype)
            for tol in (1e-3, 1e-6):
                op = HessianOperator(m, lf, x, y, chunk_size=7)
                r = lanczos_top_k(op, 5, tol=tol, max_iter=200)
                err = ((r.eigenvalues - truth).abs() / truth.abs()).max().item()
                print(f"{kind} {lname} {str(dtype)[6:]} n={op.size} tol={tol:g}: max rel err top-5 {err:.1e}, λ₁ err {abs(r.eigenvalues[0]-truth[0]).item()/truth[0].item():.1e}, HVPs {r.n_matvec}")
