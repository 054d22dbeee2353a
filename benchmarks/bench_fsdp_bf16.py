"""Finite-difference spectra of an FSDP2 model under a bf16 MixedPrecisionPolicy, against the
exact float32 spectrum of the same weights unsharded: with the policy set aside for each
product (the default, hessian/fsdp_precision.py) and, for comparison, kept (bf16 gradients).

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 benchmarks/bench_fsdp_bf16.py

tests/hf_case.py's tiny GPT-2 in float32 (its loss in the model's dtype) and tests/cases.py's
MLP; each sharded per block or layer, then the root, with param_dtype bfloat16 and
reduce_dtype float32. Rank 0 prints the top-2 eigenvalues and their relative errors."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import sharpcli
from sharpcli.hessian import finite_difference
from tests import hf_case
from tests.cases import MLP_CE

POLICY = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
SUPPORTED = finite_difference.supported


def cases():
    model, loss_fn, x, y = MLP_CE(dtype=torch.float32)
    yield "mlp", model, [m for m in model if isinstance(m, torch.nn.Linear)], (loss_fn, x, y), {}
    model = hf_case.make_model().float()
    yield ("gpt2", model, list(model.transformer.h), (None, hf_case.loader(2)),
           dict(batch_loss=hf_case.token_loss, num_terms=hf_case.shifted_tokens))


def main() -> None:
    dist.init_process_group("gloo")
    out = {}
    for name, model, parts, args, kwargs in cases():
        exact = sharpcli.spectrum(model, *args, top_k=2, tol=1e-7, hvp="exact", **kwargs)
        for part in parts:
            fully_shard(part, mp_policy=POLICY)
        fully_shard(model, mp_policy=POLICY)
        out[name] = {"exact": [r["value"] for r in exact]}
        for how in ("set_aside", "kept"):
            # "kept": the switch turned off, as on a torch whose FSDP2 it cannot find
            finite_difference.supported = (lambda m: False) if how == "kept" else SUPPORTED
            rows = sharpcli.spectrum(model, *args, top_k=2, tol=1e-7, **kwargs)
            out[name][how] = {"values": [r["value"] for r in rows], "note": rows[0]["note"],
                              "rel_error": [abs(r["value"] - e["value"]) / abs(e["value"])
                                            for r, e in zip(rows, exact)]}
        finite_difference.supported = SUPPORTED
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
