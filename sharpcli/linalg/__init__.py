"""Matrix-free linear algebra on symmetric operators: eigensolvers, trace, spectral density."""

from sharpcli.linalg.block_lanczos import block_lanczos
from sharpcli.linalg.budget import MemoryBudget, human_bytes, parse_memory
from sharpcli.linalg.deflation import lanczos_top_k
from sharpcli.linalg.density import slq_density
from sharpcli.linalg.lanczos import lanczos
from sharpcli.linalg.operator import (DenseOperator, DiagonalScaled, LinearOperator,
                                      Restricted, matrix_with_spectrum)
from sharpcli.linalg.power import power_iteration
from sharpcli.linalg.restart import restarted_lanczos
from sharpcli.linalg.results import (DensityResult, EigenResult, LinalgInputError,
                                     TraceResult)
from sharpcli.linalg.trace import control_variate_trace, hutchinson_trace

__all__ = [
    "DenseOperator", "DensityResult", "DiagonalScaled", "EigenResult", "LinalgInputError",
    "LinearOperator", "MemoryBudget", "Restricted", "TraceResult", "block_lanczos",
    "control_variate_trace", "human_bytes", "hutchinson_trace", "lanczos", "lanczos_top_k",
    "matrix_with_spectrum", "parse_memory", "power_iteration", "restarted_lanczos",
    "slq_density",
]
