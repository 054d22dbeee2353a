"""Spectra of FSDP2-sharded models, for tests/hessian/test_fsdp.py: run as

    torchrun --standalone --nproc-per-node W tests/fsdp_spectra.py OUT.json [WEIGHTS CSV]

Every process builds the same tiny models (tests/cases.py's MLP, tests/hf_case.py's GPT-2) in
float64 and float32, shards them with `fully_shard` (each layer or block, then the root), and
measures the top eigenvalues with `sharpcli.spectrum` (finite-difference products, chosen
automatically). Rank 0 writes the rows, and whether every process found its weights, its
gradients and its random number generator exactly as they were, to OUT.json. The test
compares them with one unsharded process's exact spectrum. With WEIGHTS and CSV it also runs
`sharp spectrum --model-factory tests.token_cases:model --fsdp Linear` on those weights,
writing CSV. One launch for all of it: a torchrun start costs seconds on a small machine."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import sharpcli
from sharpcli.cli import main as sharp
from tests import hf_case
from tests.cases import MLP_CE

# `sharp spectrum` on tests/token_cases.py's model, every Linear sharded, then the root
SHARP = ["spectrum", "--model-factory", "tests.token_cases:model", "--data",
         "tests.token_cases:stream", "--num-terms", "tests.token_cases:tokens", "--loss",
         "tests.token_cases:token_loss", "--top-k", "2", "--tol", "1e-9", "--quiet"]
TOP_K, TOL = 2, 1e-7  # λ error ≈ residual²/gap: far below 1e-7


def mlp(dtype):
    model, loss_fn, x, y = MLP_CE(dtype=dtype)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    # chunks of 5 examples: the processes hold different numbers of batches
    return model, dict(loss_fn=loss_fn, data=x, y=y, chunk_size=5)


def gpt2(dtype):
    model = hf_case.make_model().to(dtype)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model, dict(loss_fn=None, data=hf_case.loader(2), batch_loss=hf_case.token_loss,
                       num_terms=hf_case.shifted_tokens)


def measure(build, dtype) -> dict:
    model, args = build(dtype)
    before = [p.to_local().clone() for p in model.parameters()]
    for p in model.parameters():  # a gradient left by training, to be kept as it is
        p.grad = torch.ones_like(p)
    rng = torch.get_rng_state()
    rows = sharpcli.spectrum(model, args.pop("loss_fn"), args.pop("data"), args.pop("y", None),
                             top_k=TOP_K, tol=TOL, **args)
    kept = [all(torch.equal(b, p.to_local()) for b, p in zip(before, model.parameters())),
            all(bool((p.grad.to_local() == 1).all()) for p in model.parameters()),
            torch.equal(rng, torch.get_rng_state())]
    flags = torch.tensor([0.0 if ok else 1.0 for ok in kept])
    dist.all_reduce(flags)
    return {"rows": rows, "kept": dict(zip(("weights", "gradients", "rng"), (flags == 0).tolist()))}


def command(weights: str, csv: str) -> int:
    try:
        sharp([*SHARP, "--weights", weights, "--fsdp", "Linear", "--out", csv])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def main(out: str, cli: list[str]) -> None:
    dist.init_process_group("gloo")
    try:
        results = {f"{name}-{str(dtype)[6:]}": measure(build, dtype)
                   for name, build in (("mlp", mlp), ("gpt2", gpt2))
                   for dtype in (torch.float64, torch.float32)}
        if cli:
            results["cli_exit"] = command(*cli)
        if dist.get_rank() == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
