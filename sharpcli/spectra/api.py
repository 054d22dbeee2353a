"""`sharpcli.spectrum`: `sharp spectrum` on a model in memory, for notebooks and scripts.

Every argument is named in the signature and each one is honoured; errors name these
arguments (SharpError.param), which the CLI calls by its flags.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.hessian.calls import Call
from sharpcli.hessian.check import check_objective
from sharpcli.hessian.params import trainable_params
from sharpcli.hessian.preconditioner import preconditioner
from sharpcli.sources.data import DEFAULT_CHUNK, as_data, check_chunk_size
from sharpcli.spectra.compute import compute_spectrum
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.problem import Problem



def _note_in_python(note: str) -> str:
    """A row's note as the Python API says it: compute_spectrum writes spectrum.csv's notes
    with the command's flags (`--max-memory`, `--max-iter`), the only flags a note names."""
    return re.sub(r"--(max-memory|max-iter)\b", lambda m: m.group(1).replace("-", "_"), note)


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
             backend: str | None = None, compile: bool = False,
             seed: int | None = None) -> list[dict]:
    """The rows spectrum.csv would hold (checkpoint "" and step None), as dicts: the top-k
    eigenvalues of the Hessian of the mean loss over `data` (and with `trace`, `density`,
    `per_layer` its trace, spectral density and per-module blocks).

    A wrapper over `sharpcli.hessian` and the solvers `sharpcli.eigs`, `sharpcli.trace` and
    `sharpcli.density`, adding blocks of parameters, preconditioning, warm starts, the
    memory budget's minimum and the rows. The data and loss arguments are `sharpcli.hessian`'s
    (`chunk_size` for in-memory examples only). An argument left out (None) takes
    `sharp spectrum`'s default (docs/reference/cli.md); one given that would be ignored is
    refused: `block_size` without method="block", `check_missed` without Lanczos,
    `trace_*` without `trace`, `density_*` without `density`, `compile` with
    backend="pyhessian", `chunk_size` with a stream, `total_terms` with in-memory examples
    counted as examples, `optimizer` without `preconditioned`.

    `preconditioned=True` measures P^{-1/2} H P^{-1/2} with P from `optimizer`'s state
    (Adam, AdamW, RMSprop after their first step). `blocks` names groups of parameters, by
    patterns of their names or the preset "gpt2" (fused query, key and value split apart),
    each with its own top-k, trace and density (docs/guides/large-models.md#blocks).
    `max_memory` (bytes, or a size such as "1.5GB") bounds what every solver keeps beyond
    the model and one product (docs/guides/large-models.md#memory-budget); a row's `note`
    says what that cost, if anything. The remaining arguments are those of
    `sharp spectrum` (method: lanczos, block or power; trace_method: auto, hutchinson,
    hutch++ or gauss-newton; hessian_mode: eval or train; backend: native or pyhessian).
    The model's mode, buffers, gradients and the random number generators are left as found.
    """
    settings = dict(top_k=top_k, method=method, tol=tol, max_iter=max_iter,
                    block_size=block_size, check_missed=check_missed, trace=trace,
                    trace_method=trace_method, trace_probes=trace_probes, trace_tol=trace_tol,
                    density=density, density_runs=density_runs, density_iters=density_iters,
                    density_grid=density_grid, density_sigma=density_sigma,
                    per_layer=per_layer, blocks=blocks, max_memory=max_memory,
                    hessian_mode=hessian_mode, backend=backend, compile=compile, seed=seed)
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
    device = next(iter(model.parameters())).device
    source = as_data(data, y, num_terms=num_terms, total_terms=total_terms, chunk_size=chunk_size,
                     device=device, check_deterministic=check_deterministic)
    check_objective(model, call, source)
    problem = Problem(model, call, source, preconditioner=_preconditioner(model, optimizer,
                                                                          preconditioned))
    rows = [row.as_dict() for solve in compute_spectrum(problem, cfg)
            for row in solve.rows(problem.checkpoint, problem.step)]
    for row in rows:  # the notes name the command's flags: here, the arguments
        row["note"] = _note_in_python(row["note"])
    return rows


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
