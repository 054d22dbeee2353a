"""`sharpcli.spectrum`: `sharp spectrum` on a model in memory, for notebooks and scripts.

Every argument is named in the signature and each one is honoured; errors name these
arguments (SharpError.param), which the CLI calls by its flags.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.errors import SharpError
from sharpcli.hessian.api import HVP  # the public choices of products, one place
from sharpcli.hessian.finite_difference import is_fsdp2
from sharpcli.hessian.calls import Call
from sharpcli.hessian.check import check_objective
from sharpcli.hessian.params import trainable_params
from sharpcli.hessian.preconditioner import preconditioner
from sharpcli.sources.data import DEFAULT_CHUNK, as_data, check_chunk_size
from sharpcli.spectra.compute import compute_spectrum
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.problem import Problem



def spectrum(model: nn.Module, loss_fn: Callable | str | None, data: Any, y: torch.Tensor | None = None,
             *, num_terms: Callable[[Any], int] | None = None, total_terms: int | None = None,
             batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
             forward: Callable[[nn.Module, Any], Any] | None = None,
             output_fn: Callable[[Any], torch.Tensor] | None = None,
             check_deterministic: bool = True, chunk_size: int | None = None,
             top_k: int | None = None, method: str | None = None, tol: float | None = None,
             max_iter: int | None = None, block_size: int | None = None,
             check_missed: bool | None = None, trace: bool = False,
             trace_method: str | None = None, trace_probes: int | None = None,
             trace_tol: float | None = None, density: bool = False,
             density_runs: int | None = None, density_iters: int | None = None,
             density_grid: int | None = None, density_sigma: float | None = None,
             per_layer: bool = False, blocks: str | None = None,
             max_memory: int | str | None = None, hessian_mode: str | None = None,
             preconditioned: bool = False, optimizer: torch.optim.Optimizer | None = None,
             backend: str | None = None, compile: bool = False, hvp: str | None = None,
             seed: int | None = None) -> list[dict]:
    """The top eigenvalues of the Hessian of the mean loss over `data` (and with `trace`,
    `density`, `per_layer` or `blocks`, its trace, spectral density and blocks), as the rows
    spectrum.csv would hold: `sharp spectrum` on a model in memory.

    The Hessian is of the mean over all loss terms, each batch weighing its `num_terms` over
    the total, so the numbers do not depend on batching or chunking. The model's mode,
    buffers, gradients and the random number generators are left as found. The solvers'
    settings are those of `sharp spectrum` (docs/guides/spectrum.md#flags); one left out (None)
    takes its default. A wrapper over `sharpcli.hessian` and the solvers `sharpcli.eigs`,
    `sharpcli.trace` and `sharpcli.density`, adding blocks of parameters, preconditioning,
    warm starts, the memory budget's minimum and the rows. An argument given that would be
    ignored is refused by its name: `block_size` without method="block", `check_missed`
    without Lanczos, `trace_*` without `trace`, `density_*` without `density`, `compile`
    with backend="pyhessian", `chunk_size` with a stream, `total_terms` with in-memory
    examples, `optimizer` without `preconditioned`.

    Args:
        model: The torch model whose Hessian is measured (its trainable parameters).
        loss_fn: `loss_fn(outputs, targets)`, the mean over a batch's loss terms; "mse"
            (0.5‖f − onehot(y)‖², or 0.5‖f − y‖² for float targets) or "ce" by name; None
            with `batch_loss` for models that compute their own loss.
        data: The examples: a tensor of inputs with `y`; one `(x, y)` pair of tensors; or
            any source of `(inputs, targets)` batches (a DataLoader, a list, a callable
            returning an iterator), each batch's inputs passed as `model(x)`, `model(*x)` or
            `model(**x)` (docs/guides/own-model.md#data-sources).
        y: The targets of in-memory `data` (None for a source of batches or a pair).
        num_terms: `num_terms(batch)`, a batch's loss terms (default: its examples along
            dim 0 of the first input tensor); tokens for a per-token language-model loss.
        total_terms: All the batches' terms together, when known (else one pass counts them).
        batch_loss: `batch_loss(model, batch)`, a batch's mean loss computed by the caller,
            with `loss_fn=None`; "model" takes a Hugging Face model's own `.loss`.
        forward: `forward(model, batch)` gives the outputs instead of calling `model` on
            the batch's inputs.
        output_fn: `output_fn(outputs)` gives the predictions from the outputs (default:
            the outputs, or their `.logits`).
        check_deterministic: Refuse a source of batches that differs between two passes.
        chunk_size: Examples per forward pass of in-memory data (memory bound).
        top_k: Number of top eigenvalues, largest first.
        method: "lanczos" (default; restarts on the deflated operator so that repeated
            eigenvalues are not missed), "block" (block Lanczos) or "power" (iteration with
            deflation, as PyHessian).
        tol: Stop when every residual ‖Hv − λv‖ ≤ tol·|λ₁| (lanczos, block), or when λ
            changes by less than tol relative between iterations (power).
        max_iter: Most Hessian-vector products per Lanczos run (default max(100, 2·top_k)),
            or per eigenvalue for power (default 100).
        block_size: Vectors per block of `method="block"` (default `top_k`).
        check_missed: After convergence, one more Lanczos run on the deflated Hessian looks
            for eigenvalues the first run missed; False saves those products at that risk.
        trace: Also estimate the trace, with its standard error.
        trace_method: "auto", "hutchinson", "hutch++" or "gauss-newton" (the Gauss–Newton
            part's trace exactly, probes only for the rest).
        trace_probes: Most probes of the trace, one product each.
        trace_tol: Stop the trace once its standard error ≤ trace_tol·|trace| (default 3e-3;
            0: all probes).
        density: Also the spectral density, by stochastic Lanczos quadrature.
        density_runs: SLQ runs (random probes) averaged.
        density_iters: Lanczos steps per SLQ run.
        density_grid: Points of the density's eigenvalue grid.
        density_sigma: Gaussian smoothing width, relative to the spectrum's range.
        per_layer: Also each module's diagonal Hessian block, with its own top-k (and trace).
        blocks: Groups of parameters by patterns of their names, or the preset "gpt2" (fused
            query, key and value split apart), each with its own top-k, trace and density
            (docs/guides/large-models.md#blocks).
        max_memory: What every solver may keep beyond the model and one product: bytes, or a
            size such as "1.5GB" (None: no budget); a row's `note` says what it cost
            (docs/guides/large-models.md#memory-budget).
        hessian_mode: "eval" (BatchNorm's running statistics) or "train" (each chunk's batch
            statistics); Dropout is off in both.
        preconditioned: Measure P⁻¹ᐟ² H P⁻¹ᐟ² (the eigenvalues of P⁻¹H) with P from
            `optimizer`'s state.
        optimizer: The Adam, AdamW or RMSprop whose state gives P, after its first step;
            only with `preconditioned=True`.
        backend: "native", or "pyhessian" to cross-check with the pyhessian package
            (eigenvalues by power iteration, and the trace).
        compile: Hessian-vector products by forward-over-reverse through torch.compile.
        hvp: How products are made: "exact" (double backward), "finite-difference"
            (central differences of the gradient, for kernels without double backward) or
            "auto" (default): finite differences for a model sharded by FSDP2
            (`fully_shard`), measured where it is under torchrun, each process keeping its
            shards of every vector; a row's `note` names the product and its error
            (docs/guides/large-models.md#fsdp2).
        seed: Seed of the random start vectors and probes.

    Returns:
        The rows of spectrum.csv as dicts (checkpoint "" and step None): `block`,
            `quantity` (eigenvalue, trace, density), `index` (1 = largest), `value`,
            `residual`, `converged`, `n_hvp`, `note`, `seconds`
            (docs/reference/formats.md#spectrum-csv).

    Raises:
        SharpError: An argument out of range, one that would be ignored (`optimizer`
            without `preconditioned`), or data the model cannot read; the message names
            the argument.
    """
    settings = dict(top_k=top_k, method=method, tol=tol, max_iter=max_iter,
                    block_size=block_size, check_missed=check_missed, trace=trace,
                    trace_method=trace_method, trace_probes=trace_probes, trace_tol=trace_tol,
                    density=density, density_runs=density_runs, density_iters=density_iters,
                    density_grid=density_grid, density_sigma=density_sigma,
                    per_layer=per_layer, blocks=blocks, max_memory=max_memory,
                    hessian_mode=hessian_mode, backend=backend, compile=compile, hvp=hvp,
                    seed=seed)
    given = {name: value for name, value in settings.items() if value is not None}
    refuse_ignored(given)
    check_chunk_size(data, y, chunk_size)
    return _spectrum(model, loss_fn, data, y, num_terms=num_terms, total_terms=total_terms,
                     batch_loss=batch_loss, forward=forward, output_fn=output_fn,
                     check_deterministic=check_deterministic,
                     chunk_size=chunk_size or DEFAULT_CHUNK, preconditioned=preconditioned,
                     optimizer=optimizer, settings=given)


def refuse_ignored(given: dict[str, Any]) -> None:
    """A SharpError naming the first argument in `given` (the settings the caller gave) that
    the computation it asked for would not read, where SpectrumConfig cannot tell (its
    fields have defaults; it refuses block_size and compile itself)."""
    method = given.get("method") or ("power" if given.get("backend") == "pyhessian" else "lanczos")
    if "check_missed" in given and method != "lanczos":
        raise SharpError(f"check_missed applies to method='lanczos', not method={method!r}",
                         param="check_missed")
    for part in ("trace", "density"):
        unread = [name for name in given if name.startswith(part + "_")]
        if unread and not given.get(part):
            raise SharpError(f"{unread[0]} applies with {part}=True", param=unread[0])


def _spectrum(model, loss_fn, data, y, *, num_terms, total_terms, batch_loss, forward, output_fn,
              check_deterministic, chunk_size, preconditioned, optimizer, settings) -> list[dict]:
    if not isinstance(model, nn.Module):
        raise SharpError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    call = Call(loss_fn, batch_loss=batch_loss, forward=forward, output_fn=output_fn)
    cfg = SpectrumConfig(**settings, preconditioned=preconditioned)
    cfg.validate()
    if cfg.hvp not in HVP:
        raise SharpError(f"hvp must be one of {', '.join(HVP)}, got {cfg.hvp!r}")
    device = next(iter(model.parameters())).device
    # an FSDP2 model's processes each read their share of the data (finite_difference.py)
    split = Dist.current() if is_fsdp2(model) else SINGLE
    source = as_data(data, y, num_terms=num_terms, total_terms=total_terms, chunk_size=chunk_size,
                     device=device, check_deterministic=check_deterministic, dist=split)
    check_objective(model, call, source)
    problem = Problem(model, call, source, preconditioner=_preconditioner(model, optimizer,
                                                                          preconditioned))
    return [row.as_dict() for solve in compute_spectrum(problem, cfg)
            for row in solve.rows(problem.checkpoint, problem.step)]


def _preconditioner(model: nn.Module, optimizer, preconditioned: bool) -> torch.Tensor | None:
    """diag(P) from the optimizer's state when `preconditioned`; refusing an optimizer that
    would be ignored."""
    if not preconditioned:
        if optimizer is not None:
            raise SharpError("optimizer is read only with preconditioned=True (for its P)")
        return None
    if optimizer is None:
        raise SharpError("preconditioned=True needs optimizer=, the Adam, AdamW or RMSprop whose "
                         "state defines P")
    try:
        p = preconditioner(optimizer, trainable_params(model))
    except ValueError as err:
        raise SharpError(f"preconditioned=True: {err}") from None
    if p is None:
        raise SharpError("preconditioned=True: the optimizer has no state yet; P exists after its "
                         "first step")
    return p
