"""`--backend pyhessian`: the top eigenvalues and the trace computed by the `pyhessian` package
(Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural networks through the lens of the
Hessian", IEEE BigData 2020; PyPI release 0.1), so that users can cross-check our solvers.

PyHessian computes eigenvalues by power iteration with deflation — each pair stops when the
Rayleigh quotient changes by less than tol relative to |λ| + 1e-6, or after maxIter products —
and the trace by Hutchinson with Rademacher probes. This adapter calls it unchanged and only
works around it:

- Counting and residuals: every product goes through pyhessian's module-level
  `hessian_vector_product` (one chunk: its cached gradient graph) or its
  `dataloader_hv_product` method (several chunks); both are wrapped for the call. Each
  product's Rayleigh quotient vᵀHv and residual ‖Hv − (vᵀHv)v‖ are recorded, so the residual
  of each returned eigenvalue comes at no extra product (see `_pairs`).
- Side effects undone: pyhessian puts the model in eval mode and leaves `.grad` holding a
  graph (it calls loss.backward(create_graph=True)); modes and gradients are restored. Its
  probes come from torch's global RNG: it runs inside fork_rng, seeded with --seed. Its vectors
  use the default dtype, set to the model's for the call; `cuda=True` means the current CUDA
  device, set to ours.
- Its trace stops once the running mean changes by less than tol relative to mean + 1e-6,
  which ends after two probes whenever the mean is negative; without --trace-tol we pass
  tol = −inf and it averages exactly --trace-probes probes.
- It lacks per-layer blocks, Lanczos, Hutch++, train-mode BatchNorm (it always measures in
  eval mode) and MPS; its density() calls torch.eig, removed from torch. Those are errors.
"""

from __future__ import annotations

import importlib
import math
import time
import warnings
from contextlib import ExitStack, contextmanager

import torch

from sharpcli.errors import SharpError
from sharpcli.hessian.calls import Call
from sharpcli.interrupt import check_stop
from sharpcli.linalg import EigenResult, TraceResult
from sharpcli.spectra.config import SpectrumConfig, check_pyhessian_supported
from sharpcli.spectra.problem import Problem, Solve

_GUARD = 1e-6  # the constant in pyhessian's relative-change test


def _pyhessian():
    try:
        return importlib.import_module("pyhessian.hessian"), importlib.import_module("pyhessian.utils")
    except ImportError as err:
        raise SharpError(f"{{backend}} pyhessian needs the pyhessian package ({err}); "
                         "pip install pyhessian", param="backend") from None


class _Recorder:
    """Counts products and keeps each one's Rayleigh quotient and residual."""

    def __init__(self, group_product, should_stop):
        self.group_product, self.should_stop = group_product, should_stop
        self.quotients: list[float] = []
        self.residuals: list[float] = []

    def before(self) -> None:
        check_stop(self.should_stop)

    def after(self, hv, v, quotient: float) -> None:
        self.quotients.append(quotient)
        self.residuals.append(math.sqrt(sum(float(((h - quotient * u) ** 2).sum())
                                            for h, u in zip(hv, v))))


@contextmanager
def _session(problem: Problem, seed: int):
    """pyhessian's world for one call, and the model exactly as found afterwards."""
    module, utils = _pyhessian()
    model, device = problem.model, problem.data.device
    if device.type not in ("cpu", "cuda"):
        raise SharpError(f"{{backend}} pyhessian runs on cpu or cuda, not {device.type}",
                         param="backend")
    params = list(model.parameters())
    modes = [(m, m.training) for m in model.modules()]
    grads = [p.grad for p in params]
    default_dtype = torch.get_default_dtype()
    original_hvp = module.hessian_vector_product
    cuda = device.type == "cuda"
    try:
        with ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*create_graph=True.*")
            warnings.filterwarnings("ignore", message=".*only_inputs.*")
            index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
            stack.enter_context(torch.random.fork_rng(devices=[index] if cuda else []))
            torch.manual_seed(seed)
            if cuda:
                stack.enter_context(torch.cuda.device(device))
            if params and params[0].dtype in (torch.float32, torch.float64):
                torch.set_default_dtype(params[0].dtype)
            for p in params:
                p.grad = None  # backward() would add to them
            yield module, utils
    except (RuntimeError, TypeError, AttributeError, AssertionError) as err:
        raise SharpError(f"pyhessian failed on this model: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else ''}") from None
    finally:
        module.hessian_vector_product = original_hvp
        torch.set_default_dtype(default_dtype)
        for m, training in modes:
            m.training = training
        for p, g in zip(params, grads):
            p.grad = g


class _Loader:
    """This problem's batches as pyhessian takes them, read afresh on each of its passes:
    (x, y) tensor pairs for model(x), which it weights by their size."""

    def __init__(self, problem: Problem):
        why = None
        if not problem.call.plain:
            why = "a loss other than loss_fn(model(x), y)"
        elif problem.data.num_terms is not None:
            why = "weights by {num_terms} (it weights batches by their examples)"
        if why:
            raise SharpError(f"{{backend}} pyhessian cannot take {why}; use {{backend}} native",
                             param=("backend", "num_terms"))
        self.data = problem.data

    def __iter__(self):
        for _, batch in self.data:
            inputs, targets = Call.split(batch)
            if not isinstance(inputs, torch.Tensor):
                raise SharpError(f"{{backend}} pyhessian cannot take inputs of type "
                                 f"{type(inputs).__name__} (it calls model(x) on a tensor); "
                                 "use {backend} native", param="backend")
            yield inputs, targets


def _hessian(problem: Problem, module, utils, rec: _Recorder):
    """pyhessian's `hessian` object on our examples, its products wrapped by `rec`: one batch
    when they fit one chunk (its cached-gradient path), else its data-loader path over the
    chunks (each weighted by its size, as ours are)."""
    cuda = problem.data.device is not None and problem.data.device.type == "cuda"
    loader = _Loader(problem)
    loss_fn = problem.call.loss_fn
    if problem.data.n_batches == 1:
        original = module.hessian_vector_product

        def hvp(grads, params, v):
            rec.before()
            hv = original(grads, params, v)
            rec.after(hv, v, utils.group_product(hv, v).cpu().item())  # as pyhessian computes it
            return hv

        module.hessian_vector_product = hvp
        return module.hessian(problem.model, loss_fn, data=next(iter(loader)), cuda=cuda)
    h = module.hessian(problem.model, loss_fn, dataloader=loader, cuda=cuda)
    method = h.dataloader_hv_product

    def loader_hvp(v):
        rec.before()
        quotient, hv = method(v)
        rec.after(hv, v, quotient)
        return quotient, hv

    h.dataloader_hv_product = loader_hvp  # on this instance only
    return h


def _pairs(quotients: list[float], k: int, tol: float, max_iter: int):
    """Replay pyhessian's stopping rule over the recorded quotients: for each pair, the index
    of the product whose quotient it returned and whether its test passed. It returns the
    quotient before the one that passed the test (or the last one after maxIter products).
    None if the replay does not account for every product."""
    pairs, i = [], 0
    for _ in range(k):
        chosen, converged = None, False
        for _ in range(max_iter):
            if i >= len(quotients):
                return None
            if chosen is not None and abs(quotients[chosen] - quotients[i]) / (abs(quotients[chosen]) + _GUARD) < tol:
                converged = True
                i += 1
                break
            chosen, i = i, i + 1
        pairs.append((chosen, converged))
    return pairs if i == len(quotients) else None


def pyhessian_eigenvalues(problem: Problem, k: int, *, tol: float = 1e-3, max_iter: int = 100,
                          seed: int = 0) -> EigenResult:
    """pyhessian's top-k eigenvalues (by magnitude, as power iteration finds them), sorted by
    value like every EigenResult, with each one's residual ‖Hv − λv‖ for the vector whose
    Rayleigh quotient it is, and whether its stopping test passed."""
    with _session(problem, seed) as (module, utils):
        rec = _Recorder(utils.group_product, problem.should_stop)
        h = _hessian(problem, module, utils, rec)
        values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
    pairs = _pairs(rec.quotients, k, tol, max_iter)
    if pairs is not None and [rec.quotients[j] for j, _ in pairs] == list(values):
        residuals = [rec.residuals[j] for j, _ in pairs]
        converged = [c for _, c in pairs]
    else:  # cannot happen with pyhessian 0.1; a later release may change its loop
        residuals, converged = [math.nan] * k, [False] * k
    order = sorted(range(k), key=lambda i: -values[i])
    flat = torch.stack([torch.cat([t.reshape(-1) for t in vectors[i]]) for i in order], dim=1)
    return EigenResult(
        eigenvalues=torch.tensor([values[i] for i in order], dtype=torch.float64),
        eigenvectors=flat.detach(),
        residuals=torch.tensor([residuals[i] for i in order], dtype=torch.float64),
        converged=torch.tensor([converged[i] for i in order], dtype=torch.bool),
        n_matvec=len(rec.quotients), iterations=len(rec.quotients))


def pyhessian_trace(problem: Problem, n_probes: int = 100, *, tol: float | None = None,
                    seed: int = 0) -> TraceResult:
    """pyhessian's Hutchinson trace: the mean of its probes' vᵀHv, with our standard error.
    Exactly `n_probes` probes unless `tol` asks for pyhessian's own stopping rule."""
    with _session(problem, seed) as (module, utils):
        rec = _Recorder(utils.group_product, problem.should_stop)
        h = _hessian(problem, module, utils, rec)
        samples = h.trace(maxIter=n_probes, tol=-math.inf if tol is None else tol)
    n = len(samples)
    mean = sum(samples) / n
    stderr = math.sqrt(sum((s - mean) ** 2 for s in samples) / (n - 1) / n) if n > 1 else math.nan
    return TraceResult(mean, stderr, len(rec.quotients), n)


def pyhessian_solves(problem: Problem, cfg: SpectrumConfig):
    """The solves of compute_spectrum for --backend pyhessian (block "all" only)."""
    check_pyhessian_supported(cfg)
    size = sum(p.numel() for p in problem.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    given = {} if cfg.max_iter is None else {"max_iter": cfg.max_iter}  # else PyHessian's own
    res = pyhessian_eigenvalues(problem, cfg.top_k, tol=cfg.tol, seed=cfg.seed, **given)
    yield Solve("all", "eigenvalue", res, res.n_matvec, time.perf_counter() - start, size)
    if cfg.trace:
        start = time.perf_counter()
        tr = pyhessian_trace(problem, cfg.trace_probes, tol=cfg.trace_tol, seed=cfg.seed)
        yield Solve("all", "trace", tr, tr.n_matvec, time.perf_counter() - start, size)
