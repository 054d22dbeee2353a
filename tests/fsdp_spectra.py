"""Spectra of FSDP2-sharded models, for tests/hessian/test_fsdp.py: run as

    torchrun --standalone --nproc-per-node W tests/fsdp_spectra.py OUT.json [WEIGHTS CSV]

Every process builds the same tiny models (tests/cases.py's MLP, tests/hf_case.py's GPT-2) in
float64 and float32, shards them with `fully_shard` (each layer or block, then the root), and
measures the top eigenvalues with `sharpcli.spectrum` (finite-difference products, chosen
automatically). Rank 0 writes the rows, and whether every process found its weights, its
gradients and its random number generator exactly as they were, to OUT.json. The test
compares them with one unsharded process's exact spectrum. On the float64 MLP it also
estimates the trace (Hutchinson, Hutch++) and the density (SLQ) of the sharded Hessian, and
writes each probe's value and each run's quadrature, which the test recomputes from the
dense Hessian with the same probes. And it trains the MLP in a plain FSDP2 loop twice, with
a `sharpcli.Tracker` writing to OUT's folder/tracked-run and without, and writes the whole
weights at the measured steps (gathered here, for the test: the Tracker never does) and
whether the two runs ended with the same weights, bit for bit. With WEIGHTS and CSV it also runs
`sharp spectrum --model-factory tests.token_cases:model --fsdp Linear` on those weights,
writing CSV, and `--model-factory tests.token_cases:sharded_model --fsdp factory` (the
factory shards the model itself) with a trace and a density too (FACTORY_EXTRA), writing
CSV with -factory before its suffix and the density beside it. One launch for all of it: a torchrun start costs seconds on a small machine."""

import json
import os
import sys
from pathlib import Path

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
# the trace and density of the sharded MLP: few products, each two passes of FSDP2's gradient
SEED, HUTCHINSON, HUTCH_PP, SLQ, ROW_PROBES = 7, 16, 24, dict(runs=2, iters=15), 4
# the Tracker in `train`'s loop: 24 examples (the same share for 2 or 4 processes), steps
# 0..STEPS, a row every EVERY (the loop's own numbers)
EXAMPLES, STEPS, EVERY = 24, 2, 2
# the MLP's batches: each costs every product a gathered forward and backward per process
CHUNK = 8


def mlp(dtype):
    model, loss_fn, x, y = MLP_CE(dtype=dtype)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    # 23 examples in chunks of CHUNK: 3 batches, 2 and 1 on 2 processes, 1, 1, 1 and none on 4
    return model, dict(loss_fn=loss_fn, data=x, y=y, chunk_size=CHUNK)


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


def estimates() -> dict:
    """The float64 MLP's trace and density, sharded, with every probe's value and every
    run's nodes and weights; and `sharpcli.spectrum`'s trace and density rows of it."""
    model, args = mlp(torch.float64)
    loss_fn, x, y = args["loss_fn"], args["data"], args["y"]
    op = sharpcli.hessian(model, loss_fn, x, y, chunk_size=CHUNK)
    hutch = sharpcli.trace(op, probes=HUTCHINSON, seed=SEED)
    plus = sharpcli.trace(op, method="hutch++", probes=HUTCH_PP, seed=SEED)
    slq = sharpcli.density(op, seed=SEED, **SLQ)
    # the rows' trace: the first ROW_PROBES of the same probes; their density: one short run
    rows = sharpcli.spectrum(model, loss_fn, x, y, chunk_size=CHUNK, top_k=1, tol=1e-3, trace=True,
                             trace_probes=ROW_PROBES, trace_tol=0, density=True, density_runs=1,
                             density_iters=5, seed=SEED)
    return {"hutchinson": [hutch.value, hutch.stderr, hutch.samples, hutch.products],
            "hutch++": [plus.value, plus.products], "note": hutch.note,
            "nodes": slq.nodes.tolist(), "weights": slq.weights.tolist(),
            "integral": float(torch.trapezoid(slq.density, slq.grid)),
            "rows": [r for r in rows if r["quantity"] != "eigenvalue"]}


def whole(model) -> list:
    """The weights gathered whole (the test's record, not the Tracker's)."""
    return [p.full_tensor().tolist() for p in model.parameters()]


def train(run_dir: Path, track: bool) -> dict:
    """SGD on the float64 MLP sharded per layer, each process on its share of the examples,
    with a Tracker measuring λ₁, λ₂ every 2 steps (in chunks of 5 examples: the processes
    hold different numbers of batches), or without `tracker.step` when not `track`. The
    large-models guide's example is these lines (test_fsdp.py checks that it stays so)."""
    model, loss_fn, x, y = MLP_CE(n=EXAMPLES, dtype=torch.float64)
    for layer in model:                        # each Linear, then the root
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    rank, world = dist.get_rank(), dist.get_world_size()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=run_dir,
                               every=2, k=2, tol=1e-10, max_iter=155, chunk_size=5)
    seen = {}
    for step in range(3):
        opt.zero_grad()
        loss_fn(model(x[rank::world]), y[rank::world]).backward()  # this process's share
        if step % EVERY == 0:
            seen[step] = whole(model)
        if track:
            tracker.step(step)                 # λ₁ every 2 steps; rank 0 writes metrics.csv
        opt.step()
    tracker.close()
    seen["end"] = whole(model)
    seen["local"] = tracker.top_vectors.shape[0] if track else None  # its own coordinates
    return seen


def tracked(out: str) -> dict:
    """The Tracker's run and a run without it; rank 0's metrics.csv is the test's to read."""
    with_tracker = train(Path(out).with_name("tracked-run"), track=True)
    without = train(Path(out).with_name("untracked-run"), track=False)
    return {"weights": {str(k): v for k, v in with_tracker.items() if k != "local"},
            "local": with_tracker["local"], "unchanged": with_tracker["end"] == without["end"]}


# `--fsdp factory` also estimates the trace (4 probes, all of them) and one short density run
FACTORY_EXTRA = ["--trace", "--trace-probes", "4", "--trace-tol", "0", "--density",
                 "--density-runs", "1", "--density-iters", "5"]


def factory_csv(csv: str, kind: str = "factory") -> str:
    return str(Path(csv).with_name(f"{Path(csv).stem}-{kind}.csv"))


def command(weights: str, csv: str) -> list[int]:
    """The exit codes of `--fsdp Linear` and of `--fsdp factory`."""
    factory = [a if a != "tests.token_cases:model" else "tests.token_cases:sharded_model"
               for a in SHARP]
    codes = []
    for argv in ([*SHARP, "--fsdp", "Linear", "--out", csv],
                 [*factory, "--fsdp", "factory", *FACTORY_EXTRA, "--out", factory_csv(csv),
                  "--density-out", factory_csv(csv, "density")]):
        try:
            sharp([*argv, "--weights", weights])
            codes.append(0)
        except SystemExit as exc:
            codes.append(exc.code or 0)
    return codes


def end_launch() -> None:
    """This process's end, once its work is written. FSDP2 keeps gloo's threads alive past
    destroy_process_group (torch 2.15: they are still there after it, unlike after plain
    collectives), and on 2 busy cores one of them now and then aborts the interpreter's
    teardown ("terminate called without an active exception", SIGABRT): skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(out: str, cli: list[str]) -> None:
    dist.init_process_group("gloo")
    try:
        results = {f"{name}-{str(dtype)[6:]}": measure(build, dtype)
                   for name, build in (("mlp", mlp), ("gpt2", gpt2))
                   for dtype in (torch.float64, torch.float32)}
        results["estimates"] = estimates()
        results["tracked"] = tracked(out)
        if cli:
            results["cli_exit"] = command(*cli)
        if dist.get_rank() == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    end_launch()
