"""Products of an FSDP2 model under a bf16 MixedPrecisionPolicy, for
tests/hessian/test_fsdp_precision.py: run as

    torchrun --standalone --nproc-per-node 2 tests/fsdp_precision.py OUT.json

The same float32 MLP (tests/cases.py) is sharded twice, each Linear then the root: once with
`MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`, once without a policy.
Rank 0 writes to OUT.json the relative difference between the two models' products with
the same vector (the policy set aside for the product, hessian/fsdp_precision.py), the same
with the policy kept (the switch turned off, to show what it is worth), the note, the dtype
the first Linear's weight had in each forward, and whether a training step's gradient
after the products equals the one before them bit for bit."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import sharpcli
from sharpcli.hessian import finite_difference
from tests.cases import MLP_CE
from tests.fsdp_spectra import end_launch

BF16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def sharded_mlp(policy: MixedPrecisionPolicy):
    model, loss_fn, x, y = MLP_CE(dtype=torch.float32)  # the same weights on every call
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model, loss_fn, x, y


def training_gradient(model, loss_fn, x, y) -> torch.Tensor:
    """This process's shard of a training step's gradient on its half of the examples."""
    model.zero_grad(set_to_none=True)
    half = torch.chunk(torch.arange(len(x)), dist.get_world_size())[dist.get_rank()]
    loss_fn(model(x[half]), y[half]).backward()
    return torch.cat([p.grad.to_local().reshape(-1) for p in model.parameters()])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    sums = torch.stack([(a - b).double().pow(2).sum(), b.double().pow(2).sum()])
    dist.all_reduce(sums)
    return float((sums[0] / sums[1]).sqrt())


def products(v_seed: int = 0) -> dict:
    mixed, loss_fn, x, y = sharded_mlp(BF16)
    plain = sharded_mlp(MixedPrecisionPolicy())[0]
    seen: list[str] = []
    mixed[0].register_forward_pre_hook(lambda m, args: seen.append(str(m.weight.dtype)[6:]))
    before = training_gradient(mixed, loss_fn, x, y)
    bf16_gradient = relative(before, training_gradient(plain, loss_fn, x, y))
    seen.append("|")
    op, reference = sharpcli.hessian(mixed, loss_fn, x, y), sharpcli.hessian(plain, loss_fn, x, y)
    v = reference.shards.draw(torch.Generator().manual_seed(v_seed), "gaussian")
    exact = reference @ v
    set_aside = relative(op @ v, exact)
    seen.append("|")
    after = training_gradient(mixed, loss_fn, x, y)
    seen.append("|")
    supported = finite_difference.supported
    finite_difference.supported = lambda model: False  # the policy kept: bf16 gradients
    try:
        kept = relative(sharpcli.hessian(mixed, loss_fn, x, y) @ v, exact)
    finally:
        finite_difference.supported = supported
    return {"set_aside": set_aside, "kept": kept, "bf16_gradient": bf16_gradient,
            "note": op.note, "dtypes": " ".join(seen), "gradient_restored": torch.equal(before, after)}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    try:
        results = products()
        if dist.get_rank() == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    end_launch()
