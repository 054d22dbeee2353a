"""The Hessian core: parameters as flat vectors, losses, the chunked mean objective, the
Hessian operator (and its Gauss–Newton part), and sharpness λ₁ with its eigenvector."""

from sharpcli.hessian.operator import HessianOperator

__all__ = ["HessianOperator"]
