"""The Hessian core: parameters as flat vectors, losses, the chunked mean objective, the
Hessian operator (and its Gauss–Newton part), and sharpness λ₁ with its eigenvector.

`sharpcli.hessian(model, loss_fn, data, ...)` is the public operator (sharpcli.hessian.api):
this package is also that function, because the package and the function share one name
and Python binds the package to `sharpcli.hessian` as soon as any module of it is imported.
"""

import sys
import types

from sharpcli.hessian.operator import HessianOperator

__all__ = ["HessianOperator"]


class _CallablePackage(types.ModuleType):
    """The package, callable as `sharpcli.hessian.api.hessian`."""

    def __call__(self, *args, **kwargs) -> HessianOperator:
        from sharpcli.hessian.api import hessian

        return hessian(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
