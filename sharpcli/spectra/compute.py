"""`sharp spectrum` as a library: top-k eigenvalues, trace and spectral density of the Hessian
of the mean loss (docs/reference/mathematics.md#mean-loss), as `Solve` results.

The solvers live in sharpcli.linalg and see only an operator with a matvec; this module
builds that operator from a problem (the whole network, or one block of parameters:
spectra.blocks), hands every solver the memory budget, times each computation and counts
its Hessian-vector products.
`--backend pyhessian` hands the same questions to the `pyhessian` package instead
(sharpcli.spectra.pyhessian).
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from sharpcli.config import Backend, Method, TraceMethod
from sharpcli.errors import SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.finite_difference import is_fsdp2, reshard, resolve_hvp
from sharpcli.hessian.ggn import GaussNewtonPart, gauss_newton_separable, gauss_newton_unavailable
from sharpcli.hessian.params import full_precision, num_params, trainable_params
from sharpcli.linalg import MemoryBudget, Restricted, control_variate_trace
from sharpcli.linalg.api import BUDGETED_MAX_ITER, density, eigs, trace  # noqa: F401 (re-exported)
from sharpcli.linalg.budget import require_minimum
from sharpcli.linalg.deflation import minimum_vectors as top_k_minimum
from sharpcli.linalg.density import MINIMUM_VECTORS as DENSITY_MINIMUM
from sharpcli.linalg.power import minimum_vectors as power_minimum
from sharpcli.linalg.restart import minimum_vectors as restarted_minimum
from sharpcli.linalg.trace import minimum_vectors as trace_minimum
from sharpcli.linalg.shard import dimension
from sharpcli.spectra.blocks import Block, parameter_blocks
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.problem import Problem, Solve, Stoppable


def compute_spectrum(problem: Problem, cfg: SpectrumConfig,
                     warm: dict[str, torch.Tensor] | None = None,
                     keep_warm: bool = True) -> Iterator[Solve]:
    """The requested quantities one at a time, so a caller can write each as soon as it is
    done: eigenvalues of the whole network first, then its trace and density, then each
    block's eigenvalues (and traces, and with --blocks densities) block by block.

    A top-k larger than the whole network's parameter count is an error; a block smaller
    than k gives all of its eigenvalues instead. `warm`, when given, maps a block's name to
    the eigenvectors of the last solve (the previous checkpoint of the same run): each
    eigenvalue solve starts from them, and with `keep_warm` leaves its own there for the
    next (on the host under --max-memory, outside the device's budget); without, it takes
    them out. With --max-memory every solver keeps at most that much; a budget below what
    the whole network's solvers need at least is an error before anything is computed.
    """
    n = num_params(trainable_params(problem.model))
    if cfg.top_k > n:
        raise SharpError(f"{{top_k}} {cfg.top_k} is more than the model's {n} parameters",
                         param="top_k")
    if cfg.backend is Backend.pyhessian:
        if problem.dist.enabled:
            raise SharpError("{backend} pyhessian runs in one process: its products cannot be "
                             "summed over torchrun's processes; use {backend} native",
                             param="backend")
        from sharpcli.spectra.pyhessian import pyhessian_solves  # an optional package

        yield from pyhessian_solves(problem, cfg)
        return
    blocks = parameter_blocks(reshard(problem.model), cfg.per_layer, cfg.blocks)
    budget = memory_budget(cfg, blocks["all"])
    if cfg.trace:
        _check_trace_method(problem, cfg, blocks)
    for name, block in blocks.items():
        def eigenvalues(op, name=name):
            start = None if warm is None else _warm_start(warm.pop(name, None), op)
            result, note = _eigenvalues(op, cfg, start, budget)
            if warm is not None and keep_warm:
                vectors = result.eigenvectors
                warm[name] = vectors.cpu() if budget is not None else vectors
            return result, note

        yield _timed(name, "eigenvalue", eigenvalues, problem, cfg, block)
        if cfg.trace:
            yield _timed(name, "trace", lambda op, b=block: _trace(op, problem, cfg, b, budget),
                         problem, cfg, block)
        if cfg.density and (name == "all" or cfg.blocks is not None):
            yield _timed(name, "density", lambda op: (_density(op, cfg, budget), None),
                         problem, cfg, block)


def _timed(name: str, quantity: str, solve, problem: Problem, cfg: SpectrumConfig,
           block: Block) -> Solve:
    """Run `solve(operator)` → (result, note) on the block's Hessian; its wall time includes
    building the operator (the gradient graph is part of the cost). The note gathers what
    the caller should be told: the solve's own, and what a memory budget cost the result."""
    start = time.perf_counter()
    with full_precision():  # the solver's own arithmetic too: fp32, TF32 off
        hvp = resolve_hvp(cfg.hvp, problem.model)
        hessian = HessianOperator(problem.model, problem.call, problem.data, params=block.params,
                                  mode=cfg.hessian_mode,
                                  hvp="forward-over-reverse" if cfg.compile else hvp,
                                  compile=cfg.compile)
        op = problem.scaled(hessian, block.params)
        if block.coords is not None:  # part of a parameter: R H_p Rᵀ
            op = Restricted(op, block.coords)
        op = Stoppable(op, problem.should_stop, problem.dist)
        result, note = solve(op)
    notes = [hessian.note, note, getattr(result, "note", "")]
    # the block's parameters: the whole space's, not this process's shards (FSDP2)
    return Solve(name, quantity, result, result.n_matvec, time.perf_counter() - start,
                 dimension(op), note="; ".join(filter(None, notes)) or None)


def memory_budget(cfg: SpectrumConfig, whole: Block) -> MemoryBudget | None:
    """--max-memory as a MemoryBudget, or None; a SharpError naming the minimum when it
    cannot hold the least that the requested solvers keep of the whole network (the largest
    block: every other one needs less)."""
    nbytes = cfg.memory_bytes
    if nbytes is None:
        return None
    budget = MemoryBudget(nbytes)
    size = whole.size
    require_minimum(budget, size, whole.params[0].dtype,
                    _minimum_vectors(cfg, min(cfg.top_k, size), size))
    return budget


def _minimum_vectors(cfg: SpectrumConfig, k: int, size: int) -> list[tuple[int, str]]:
    """(vectors, what they are) of the least each requested solver keeps within a budget."""
    method, b = cfg.eigen_method, cfg.block_size or k
    if method is Method.block:
        eigen = (restarted_minimum(k, b, size),
                 f"block Lanczos keeps {k} Ritz vectors, 2 blocks of {b} and {b} of scratch")
    elif method is Method.power:
        eigen = (power_minimum(k), f"power iteration keeps {k} pairs and 3 vectors")
    elif cfg.check_missed:
        eigen = (top_k_minimum(k),
                 f"Lanczos keeps the top {k} while it looks for missed ones in 5 more "
                 f"({{check_missed=False}}: {restarted_minimum(k, 1, size)})")
    else:
        eigen = (restarted_minimum(k, 1, size),
                 f"Lanczos keeps {k} Ritz vectors, 2 Lanczos vectors and 1 of scratch")
    needs = [eigen]
    if cfg.trace:
        needs.append((trace_minimum(cfg.trace_method.value),
                      "the trace keeps a probe and 1 vector of scratch (hutch++: and a sketch)"))
    if cfg.density:
        needs.append((DENSITY_MINIMUM, "the density keeps 2 Lanczos vectors and a probe"))
    return needs


def _eigenvalues(op, cfg: SpectrumConfig, v0: torch.Tensor | None, budget: MemoryBudget | None):
    """The top k by the chosen method (sharpcli.eigs), started from the columns of v0 when
    given. Returns the result and no note of its own: `_timed` reads the result's (what the
    budget cost)."""
    result = eigs(op, min(cfg.top_k, dimension(op)), tol=cfg.tol, max_iter=cfg.max_iter,
                  method=cfg.eigen_method.value,
                  check_missed=cfg.check_missed if cfg.eigen_method is Method.lanczos else None,
                  block_size=cfg.block_size, max_memory=budget, seed=cfg.seed, v0=v0)
    return result, None


def _warm_start(vectors: torch.Tensor | None, op) -> torch.Tensor | None:
    """The previous solve's eigenvectors if they fit this operator (same parameter count,
    finite, a sum that does not cancel), else None: a cold start."""
    if vectors is None or vectors.shape[0] != op.size or not bool(torch.isfinite(vectors).all()):
        return None
    vectors = vectors.to(device=op.device, dtype=op.dtype)
    return vectors if float(vectors.sum(dim=1).norm()) > 0 else None


def trace_method(problem: Problem, cfg: SpectrumConfig, block: Block | None = None) -> TraceMethod:
    """--trace-method with `auto` resolved: the Gauss–Newton control variate wherever it
    applies (each example's output its own and available, the operator H itself, and the
    block whole parameters), Hutchinson where it does not."""
    if cfg.trace_method is not TraceMethod.auto:
        return cfg.trace_method
    applies = (gauss_newton_separable(problem.model, cfg.hessian_mode) and not cfg.preconditioned
               and _gauss_newton_unavailable(problem) is None
               and (block is None or block.coords is None))
    return TraceMethod.gauss_newton if applies else TraceMethod.hutchinson


def trace_note(problem: Problem, cfg: SpectrumConfig, block: Block | None = None) -> str | None:
    """Why an `auto` trace fell back to Hutchinson where the Gauss–Newton control variate
    would be the default: the per-example outputs it needs are not available, or the block
    is part of a parameter (the control variate's exact trace covers whole parameters)."""
    if cfg.trace_method is not TraceMethod.auto or cfg.preconditioned:
        return None
    why = _gauss_newton_unavailable(problem)
    if why is None and block is not None and block.coords is not None:
        why = "the block is part of a parameter"
    return None if why is None else f"trace by Hutchinson (no Gauss–Newton control variate: {why})"


def _gauss_newton_unavailable(problem: Problem) -> str | None:
    """Why the Gauss–Newton control variate cannot be taken, or None: its per-example
    Jacobian products need the whole weights, which a model sharded by FSDP2 does not hold
    (the trace is then Hutchinson's on the shards)."""
    if is_fsdp2(problem.model):
        return "the model is sharded by FSDP2"
    return gauss_newton_unavailable(problem.call, problem.data)


def _check_trace_method(problem: Problem, cfg: SpectrumConfig, blocks: dict[str, Block]) -> None:
    """The refusals of --trace-method gauss-newton, before anything is computed."""
    if trace_method(problem, cfg) is not TraceMethod.gauss_newton:
        return
    if not gauss_newton_separable(problem.model, cfg.hessian_mode):
        raise SharpError("{trace_method} gauss-newton needs each example's output to depend "
                         "on that example alone, and BatchNorm in {hessian_mode} train "
                         "normalises by the batch; use {hessian_mode} eval or {trace_method} "
                         "hutchinson", param=("trace_method", "hessian_mode"))
    why = _gauss_newton_unavailable(problem)
    if why is not None:
        raise SharpError(f"{{trace_method}} gauss-newton needs per-example outputs, but {why}; "
                         "use {trace_method} hutchinson", param="trace_method")
    split = next((name for name, block in blocks.items() if block.coords is not None), None)
    if split is not None and cfg.trace_method is TraceMethod.gauss_newton:
        raise SharpError(f"{{trace_method}} gauss-newton takes whole parameters, and the block "
                         f"{split!r} is part of one; use {{trace_method}} auto or hutchinson",
                         param="trace_method")


def _trace(op, problem: Problem, cfg: SpectrumConfig, block: Block, budget):
    method = trace_method(problem, cfg, block)
    note = trace_note(problem, cfg, block)
    if method is TraceMethod.gauss_newton:
        # tr H = tr G (exact) + E[zᵀHz − zᵀGz]: only the small remainder is left to chance
        part = GaussNewtonPart(problem.model, problem.call, problem.data, params=block.params,
                               mode=cfg.hessian_mode,
                               # a stop within the Jacobian pass would leave the other
                               # processes in its sum: they stop at the next product together
                               should_stop=None if problem.dist.enabled else problem.should_stop)
        return control_variate_trace(op, part.trace(), part.quadratic_form,
                                     n_probes=cfg.trace_probes, tol=cfg.native_trace_tol,
                                     seed=cfg.seed, max_memory=budget), note
    return trace(op, probes=cfg.trace_probes, tol=cfg.native_trace_tol, seed=cfg.seed,
                 method=method.value, max_memory=budget), note


def _density(op, cfg: SpectrumConfig, budget):
    return density(op, runs=cfg.density_runs, iters=cfg.density_iters, grid=cfg.density_grid,
                   sigma=cfg.density_sigma, seed=cfg.seed, max_memory=budget)
