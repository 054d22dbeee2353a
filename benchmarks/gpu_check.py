"""The GPU check behind gpu_check.sh: ResNet-18 on CIFAR-shaped data, 50 SAM steps with λ₁
tracked, then a top-5 spectrum of the last checkpoint; prints step time, HVP time and peak
GPU memory. Runs alone or under torchrun (then rank 0 prints).

    python benchmarks/gpu_check.py [--data-dir DIR] [--device cuda] [--steps 50] [--out DIR]

CIFAR-10 is read from --data-dir when its files are there; otherwise random uint8 images of
CIFAR's shape are written in CIFAR's own file format under --out and read from there (the
timings do not depend on the pixels)."""

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


def fake_cifar(root: Path, n_train: int, n_test: int) -> Path:
    """Random CIFAR-10 files (5 training batches and a test batch) under root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    sizes = [n_train // 5] * 5 + [n_test]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, sizes):
        batch = {"data": gen.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": gen.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


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
    args = p.parse_args()
    out = Path(args.out)
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
