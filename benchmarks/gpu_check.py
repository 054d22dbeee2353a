"""The GPU check behind gpu_check.sh: ResNet-18 on CIFAR-shaped data, 50 SAM steps with λ₁
tracked, then a top-5 spectrum of the last checkpoint; prints step time, HVP time and peak
GPU memory. Runs alone or under torchrun (then rank 0 prints).

    python benchmarks/gpu_check.py [--data-dir DIR] [--device cuda] [--steps 50] [--out DIR]

With --only-epoch instead (one process): one epoch of the recipe eigensam-cifar100-resnet18
for each of sgd, sam and eigen-sam in fp32 and in bf16, λ₁ tracking off (the check above
times measurements): images per second of training, the epoch's wall time (its first and
last step's evaluation of 60,000 images included) and peak GPU memory; a table, and
OUT/recipe-epoch.csv. A CPU smoke run of the script (numbers meaningless):

    python benchmarks/gpu_check.py --device cpu --only-epoch --epoch-train-size 512 \
        --epoch-test-size 128 --epoch-width 2 --out /tmp/gpu-check

With --only-gpt instead (one process): the 26M GPT of benchmarks/gpt.py (bench_large.py
measures it on the CPU) on random tokens, its top-5 by `sharp spectrum`'s solver at tol 1e-4
without a budget and within budgets of 100, 20, 14 (1.5 GB) and 10 vectors: products, time
per product, peak GPU memory, the largest eigenvalue difference from the unbudgeted run; a
table, and OUT/gpt-budgets.csv. A CPU smoke run at a toy size:

    python benchmarks/gpu_check.py --device cpu --only-gpt --gpt-width 64 --gpt-layers 2 \
        --gpt-vocab 512 --gpt-length 16 --out /tmp/gpu-check

CIFAR-10 and CIFAR-100 are read from --data-dir when their files are there; otherwise random
uint8 images of CIFAR's shape are written in CIFAR's own file format under --out and read
from there (the timings do not depend on the pixels)."""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sharpcli.config import TrainConfig
from sharpcli.distributed import process_group
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.run import run_spectrum
from sharpcli.training.loop import train


def fake_cifar(root: Path, n_train: int, n_test: int, name: str = "cifar10") -> Path:
    """Random CIFAR-10 files (5 training batches and a test batch) or CIFAR-100 files (one
    of each) under root."""
    if name == "cifar10":
        folder, key, classes = root / "cifar-10-batches-py", "labels", 10
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        sizes = [n_train // 5] * 5 + [n_test]
    else:
        folder, key, classes = root / "cifar-100-python", "fine_labels", 100
        names, sizes = ["train", "test"], [n_train, n_test]
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    for file, n in zip(names, sizes):
        batch = {"data": gen.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: gen.integers(0, classes, n).tolist()}
        with open(folder / file, "wb") as f:
            pickle.dump(batch, f)
    return root


def recipe_epoch(args, out: Path) -> list[dict]:
    """One epoch of eigensam-cifar100-resnet18 per optimizer and precision: the training
    rate between the second step and the last full batch (outside the first and last
    steps' evaluation and checkpoint; Eigen-SAM's refresh at step 100 inside), the epoch's
    wall time and peak memory."""
    from sharpcli.recipes import recipe_config

    data_dir = Path(args.data_dir)
    if not (data_dir / "cifar-100-python" / "train").is_file():
        data_dir = fake_cifar(out / "data", args.epoch_train_size, args.epoch_test_size, "cifar100")
    cuda = torch.device(args.device).type == "cuda"
    rows = []
    for precision in ("fp32", "bf16"):
        for optimizer in ("sgd", "sam", "eigen-sam"):
            tag = f"epoch-{optimizer}-{precision}"
            config = recipe_config("eigensam-cifar100-resnet18", optimizer=optimizer,
                                   precision=precision, epochs=1, data_dir=str(data_dir),
                                   train_size=args.epoch_train_size, test_size=args.epoch_test_size,
                                   width=args.epoch_width, device=args.device, run_name=tag,
                                   sharpness_every=0,
                                   reports_dir=str(out / "reports"),
                                   checkpoints_dir=str(out / "checkpoints"), quiet=True)
            marks = {}

            def on_step(step: int, total: int, row) -> None:
                if step in (1, total - 2):  # steps 1 .. total − 3 in between: full batches
                    if cuda:
                        torch.cuda.synchronize()
                    marks[step] = time.perf_counter()

            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            result = train(config, progress=on_step)
            epoch_s = time.perf_counter() - t0
            steps = result.total_steps
            timed = steps - 3  # updates 1 .. steps − 3 and the gradients of 2 .. steps − 2
            rate = (timed * config.batch_size / (marks[steps - 2] - marks[1])
                    if timed > 0 and len(marks) == 2 else float("nan"))
            rows.append({"optimizer": optimizer, "precision": precision,
                         "images_per_s": rate, "step_ms": config.batch_size / rate * 1e3,
                         "epoch_s": epoch_s, "steps": steps,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                         "final_train_loss": result.last_row.get("train_loss")})
    return rows


def gpt_budgets(args) -> list[dict]:
    """The GPT's top-5 without a budget, then within each of args.gpt_budgets (vectors of the
    model's size): what each run took, the peak memory of the device (each run's own: the
    counter is reset before it), and its eigenvalues' largest relative difference from the
    unbudgeted run's."""
    from gpt import make_gpt, next_token_loss, token_batch
    from sharpcli.hessian import HessianOperator
    from sharpcli.hessian.params import full_precision
    from sharpcli.linalg import lanczos_top_k
    from sharpcli.spectra.compute import BUDGETED_MAX_ITER

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = {k: v for k, v in dict(width=args.gpt_width, layers=args.gpt_layers,
                                   vocab=args.gpt_vocab).items() if v is not None}
    if "width" in sizes:
        sizes["heads"] = max(1, sizes["width"] // 64)
    model = make_gpt(**sizes).to(device)
    x, y = (t.to(device) for t in token_batch(model.transformer.wte.num_embeddings,
                                              args.gpt_sequences, args.gpt_length))
    rows, reference = [], None
    for budget in ["none", *args.gpt_budgets]:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with full_precision():
            op = HessianOperator(model, next_token_loss, x, y)
            memory = None if budget == "none" else int(budget) * op.size * 4
            t0 = time.perf_counter()
            res = lanczos_top_k(op, 5, tol=1e-4, max_memory=memory,
                                max_iter=100 if memory is None else BUDGETED_MAX_ITER)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        values = res.eigenvalues
        reference = values if reference is None else reference
        rows.append({"budget_vectors": budget, "budget_gb": 0.0 if memory is None else memory / 1e9,
                     "params": op.size, "products": res.n_matvec, "restarts": res.restarts,
                     "seconds": seconds, "ms_per_product": seconds / res.n_matvec * 1e3,
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                     "lambda1": float(values[0]),
                     "max_rel_diff": float(((values - reference).abs() / reference.abs()).max()),
                     "converged": bool(res.converged.all())})
        del op, res
    return rows


def print_gpt(rows: list[dict], args, out: Path) -> None:
    write_csv(rows, out / "gpt-budgets.csv")
    device = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"top-5 of a {rows[0]['params']:,}-parameter GPT on {args.gpt_sequences}×"
          f"{args.gpt_length} tokens, tol 1e-4, on {device}:")
    print(f"  {'budget':<18} {'products':>8} {'restarts':>8} {'s':>7} {'ms/product':>10} "
          f"{'peak GiB':>9} {'λ₁':>10} {'max rel Δλ':>10}")
    for r in rows:
        budget = "none" if r["budget_vectors"] == "none" else \
            f"{r['budget_vectors']} ({r['budget_gb']:.2g} GB)"
        print(f"  {budget:<18} {r['products']:>8} {r['restarts']:>8} {r['seconds']:>7.1f} "
              f"{r['ms_per_product']:>10.1f} {r['peak_gib']:>9.2f} {r['lambda1']:>10.5g} "
              f"{r['max_rel_diff']:>10.1e}")
    print(f"  written to {out / 'gpt-budgets.csv'}")


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def print_epoch(rows: list[dict], args, out: Path) -> None:
    write_csv(rows, out / "recipe-epoch.csv")
    device = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"one epoch of eigensam-cifar100-resnet18 ({args.epoch_train_size} images, ResNet-18 "
          f"width {args.epoch_width}, batch 256) on {device}:")
    print(f"  {'optimizer':<10} {'precision':<9} {'images/s':>10} {'ms/step':>8} "
          f"{'epoch s':>8} {'peak GiB':>9}")
    for r in rows:
        print(f"  {r['optimizer']:<10} {r['precision']:<9} {r['images_per_s']:>10.0f} "
              f"{r['step_ms']:>8.1f} {r['epoch_s']:>8.1f} {r['peak_gib']:>9.2f}")
    print(f"  written to {out / 'recipe-epoch.csv'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="where CIFAR-10 is, if anywhere")
    p.add_argument("--device", default="cuda", help="cuda (under torchrun: each process its GPU)")
    p.add_argument("--steps", type=int, default=50, help="SAM steps")
    p.add_argument("--train-size", type=int, default=5000, help="CIFAR training examples")
    p.add_argument("--batch-size", type=int, default=128, help="SAM's minibatch")
    p.add_argument("--width", type=int, default=64, help="ResNet-18's base channels (64: the real one)")
    p.add_argument("--samples", type=int, default=512, help="examples in the measured Hessians")
    p.add_argument("--out", default="gpu-check-out", help="reports, checkpoints, fake data")
    p.add_argument("--only-epoch", action="store_true",
                   help="instead: one epoch of eigensam-cifar100-resnet18 per optimizer, precision")
    p.add_argument("--epoch-train-size", type=int, default=50000, help="CIFAR-100 training images")
    p.add_argument("--epoch-test-size", type=int, default=10000, help="CIFAR-100 test images")
    p.add_argument("--epoch-width", type=int, default=64, help="ResNet-18's base channels")
    p.add_argument("--only-gpt", action="store_true",
                   help="instead: the 26M GPT's top-5 within memory budgets")
    p.add_argument("--gpt-budgets", nargs="+", default=["100", "20", "14", "10"],
                   help="budgets in vectors of the model's size (14: 1.5 GB at 26M)")
    p.add_argument("--gpt-sequences", type=int, default=8, help="token sequences")
    p.add_argument("--gpt-length", type=int, default=128, help="tokens per sequence")
    p.add_argument("--gpt-width", type=int, help="a toy size: width (heads: width/64)")
    p.add_argument("--gpt-layers", type=int, help="a toy size: layers")
    p.add_argument("--gpt-vocab", type=int, help="a toy size: vocabulary")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only_epoch:
        print_epoch(recipe_epoch(args, out), args, out)
        return
    if args.only_gpt:
        print_gpt(gpt_budgets(args), args, out)
        return
    data_dir = Path(args.data_dir)
    with process_group(args.device, 600) as dist:
        real = (data_dir / "cifar-10-batches-py" / "data_batch_1").is_file()
        if not real and dist.is_main:
            fake_cifar(out / "data", max(args.train_size, 5000), 1000)
        dist.barrier()
        data_dir = data_dir if real else out / "data"
        tag = f"resnet18-sam-w{dist.world_size}"
        config = TrainConfig(dataset="cifar10", data_dir=str(data_dir), train_size=args.train_size,
                             test_size=1000, model="resnet18", width=args.width, loss="ce", optimizer="sam",
                             lr=0.05, momentum=0.9, rho=0.05, batch_size=args.batch_size,
                             steps=args.steps, sharpness_every=10, sharpness_samples=args.samples,
                             physical_batch_size=args.samples, eval_every=args.steps,
                             checkpoint_every=args.steps, device=args.device, run_name=tag,
                             reports_dir=str(out / "reports"),
                             checkpoints_dir=str(out / "checkpoints"), quiet=True)
        cuda = torch.cuda.is_available() and args.device != "cpu"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = train(config, dist=dist)
        train_s = time.perf_counter() - t0
        train_peak = torch.cuda.max_memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        spectra = run_spectrum([out / "checkpoints" / tag],
                               SpectrumConfig(top_k=5, samples=args.samples, batch_size=args.samples,
                                              device=args.device), out=out / f"{tag}-spectrum.csv",
                               dist=dist)
        spectrum_peak = torch.cuda.max_memory_allocated() if cuda else 0
    if not dist.is_main:
        return
    last = spectra[-1].solves[0]
    measured = [r for r in result.rows if r.get("sharpness") is not None]
    print(f"{tag}: {'CIFAR-10' if real else 'random CIFAR-shaped data'}, "
          f"{dist.world_size} process(es), {torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(f"  train: {args.steps} SAM steps of {args.batch_size} in {train_s:.1f} s "
          f"({result.seconds / max(args.steps, 1) * 1e3:.1f} ms a step, λ₁ measured "
          f"{len(measured)} times included); final λ₁ {measured[-1]['sharpness']:.4g}")
    print(f"  spectrum: top-5 {last.result.eigenvalues.tolist()} in {last.n_hvp} HVPs, "
          f"{last.seconds / last.n_hvp * 1e3:.1f} ms an HVP on {args.samples} examples")
    print(f"  peak GPU memory: training {train_peak / 2**30:.2f} GiB, spectrum "
          f"{spectrum_peak / 2**30:.2f} GiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
