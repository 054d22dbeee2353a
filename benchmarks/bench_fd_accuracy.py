"""The accuracy of finite-difference Hessian-vector products against the step's constant c:
one process, tests/hf_case.py's tiny GPT-2 and tests/cases.py's MLP, in float32 and float64,
the central difference and Richardson's 4-point formula.

    OMP_NUM_THREADS=1 python benchmarks/bench_fd_accuracy.py

Per cell: z, the relative error of the product with a Gaussian vector; u₁, that of the
product with the top eigenvector of the dense Hessian; ray, |u₁ᵀ(Hu₁)_fd − λ₁|/λ₁."""

from __future__ import annotations

import torch

from sharpcli.hessian import HessianOperator
from sharpcli.hessian.calls import Call
from sharpcli.sources.data import as_data
from tests import hf_case
from tests.cases import MLP_CE

SCALES = (0.001, 0.003, 0.01, 0.03, 0.1)


def operators(name: str, dtype: torch.dtype) -> tuple[HessianOperator, HessianOperator]:
    """(exact, finite-difference) Hessians of one model."""
    if name == "gpt2":
        model = hf_case.make_model().to(dtype)

        def make(hvp):
            data = as_data(hf_case.loader(2), num_terms=hf_case.shifted_tokens)
            return HessianOperator(model, Call(None, batch_loss=hf_case.token_loss), data, hvp=hvp)
    else:
        model, loss, x, y = MLP_CE(dtype=dtype)

        def make(hvp):
            return HessianOperator(model, loss, x, y, hvp=hvp)
    return make("exact"), make("finite-difference")


def main() -> None:
    for name in ("gpt2", "mlp"):
        for dtype in (torch.float32, torch.float64):
            exact, fd = operators(name, dtype)
            h = exact.dense().double()
            lam, vecs = torch.linalg.eigh((h + h.T) / 2)
            u = vecs[:, -1].to(dtype)
            z = torch.randn(exact.size, generator=torch.Generator().manual_seed(3), dtype=dtype)
            for order in (2, 4):
                fd._fd.order = order
                cells = []
                for c in SCALES:
                    fd._fd.scale = c
                    hu, hz = fd.matvec(u).double(), fd.matvec(z).double()
                    tz, tu = h @ z.double(), h @ u.double()
                    cells.append(f"c={c:g}: z {float((hz - tz).norm() / tz.norm()):.0e} "
                                 f"u₁ {float((hu - tu).norm() / tu.norm()):.0e} "
                                 f"ray {abs(float((u.double() @ hu - lam[-1]) / lam[-1])):.0e}")
                formula = "Richardson" if order == 4 else "central"
                print(f"{name} {str(dtype)[6:]} {formula}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
