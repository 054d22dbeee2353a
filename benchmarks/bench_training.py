"""Training cost: `sharpcli.training.loop` against a minimal hand-written torch loop with the same
model, data and settings.

A step's time is the interval between consecutive calls of train()'s progress callback
(update t − 1, then the gradient of step t and whatever step t measures), averaged over
steps 1 … T − 2 (step 0 and the last step also evaluate and checkpoint). The hand-written
loop is timed the same way around `zero_grad; loss(model(x), y).backward(); opt.step()`.
Evaluation and checkpoints are off (every 10⁹ steps) except where stated, so the ratios
isolate the update. Each variant runs `repeats` times, interleaved with the others; the
figure is the median over repeats of the mean step time.
Eigen-SAM refreshes every 100 steps: T = 302 (the MLP) puts three refreshes in the 300
steps averaged, T = 102 (the CNN) one in 100: the rate of a long run.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time

import torch

from common import base_parser, command_line, machine_line, setup, table, write_section
from sharpcli.config import TrainConfig
from sharpcli.workload.data import load_dataset
from sharpcli.hessian.losses import mse_loss
from sharpcli.workload.models import build_model
from sharpcli.training.loop import train

MODELS = {  # settings, and the steps T of each run
    "mlp 15k (default run)": (dict(model="mlp", width=100, depth=2, lr=0.3), 302),
    "cnn 20k": (dict(model="cnn", width=64, depth=2, lr=0.1), 102),
}
QUICK_MODELS = {"mlp": (dict(model="mlp", width=50, depth=2, lr=0.3), 102)}

OFF = 10**9


FIRST: dict[str, list[float]] = {}  # seconds from train() to its first progress call, per run name


def sharpcli_steps(root: str, steps: int, **settings) -> list[float]:
    """Per-step seconds of one train() run (steps 1 … T − 1); the time to the first step
    (set-up, and with --compile the compilation) goes to FIRST."""
    stamps: list[float] = [time.perf_counter()]
    config = TrainConfig(reports_dir=f"{root}/reports", checkpoints_dir=f"{root}/checkpoints",
                         steps=steps, quiet=True, device="cpu", seed=0,
                         **{"eval_every": OFF, "checkpoint_every": OFF, "sharpness_every": 0,
                            **settings})
    train(config, progress=lambda step, total, row: stamps.append(time.perf_counter()))
    shutil.rmtree(f"{root}/reports"), shutil.rmtree(f"{root}/checkpoints")
    FIRST.setdefault(repr(sorted(settings.items())), []).append(stamps[1] - stamps[0])
    stamps = stamps[1:]
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])][: steps - 2]  # steps 1 … T − 2


def hand_steps(steps: int, model: str, width: int, depth: int, lr: float,
               batch_size: int | None = None, train_size: int = 1000, **_) -> list[float]:
    """The minimal loop: data on the device, SGD, index slices of a per-epoch permutation."""
    data = load_dataset("mnist1d", train_size=train_size, test_size=10)
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    net = build_model(model, data.input_shape, data.num_classes, width=width, depth=depth)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    n = len(x)
    per_epoch = 1 if batch_size is None else n // batch_size
    stamps = [time.perf_counter()]
    for step in range(steps):
        if batch_size is None:
            xb, yb = x, y
        else:
            i = step % per_epoch
            if i == 0:
                perm = torch.randperm(n)
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
        opt.zero_grad()
        mse_loss(net(xb), yb).backward()
        opt.step()
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])][1:-1]  # steps 1 … T − 2


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="steps T of every run (default: 302 for the MLP, "
                   "102 for the CNN)")
    p.add_argument("--cnn", action="store_true", help="also the 20k-parameter cnn (slow on 2 cores)")
    args = p.parse_args()
    setup(args.threads)
    models = QUICK_MODELS if args.quick else MODELS
    if not args.cnn and not args.quick:
        models = {k: v for k, v in models.items() if not k.startswith("cnn")}
    root = tempfile.mkdtemp(prefix="sharp-bench-train-")
    rows, headline = [], {}
    for name, (m, default_steps) in models.items():
        steps = args.steps or default_steps
        variants = {
            "hand-written gd": lambda: hand_steps(steps, **m),
            "sharpcli gd": lambda: sharpcli_steps(root, steps, **m),
            "hand-written sgd (batch 100)": lambda: hand_steps(steps, batch_size=100, **m),
            "sharpcli sgd (batch 100)": lambda: sharpcli_steps(root, steps, optimizer="sgd", batch_size=100, **m),
            "sharpcli sam": lambda: sharpcli_steps(root, steps, optimizer="sam", **m),
            "sharpcli eigen-sam (every 100, 5 iters)": lambda: sharpcli_steps(
                root, steps, optimizer="eigen-sam", eig_every=100, eig_iters=5, **m),
            "sharpcli gd, --sharpness-every 20": lambda: sharpcli_steps(
                root, steps, sharpness_every=20, **m),
            "sharpcli gd, defaults (sharpness + eval every 20)": lambda: sharpcli_steps(
                root, steps, sharpness_every=20, eval_every=20, **m),
            "sharpcli gd, --compile": lambda: sharpcli_steps(root, steps, compile=True, **m),
        }
        means = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, fn in variants.items():
                means[k].append(statistics.mean(fn()))
        t = {k: statistics.median(v) for k, v in means.items()}
        print(name, {k: f"{v * 1e3:.3f} ms" for k, v in t.items()}, file=sys.stderr)
        ratios = {
            "gd: sharpcli / hand-written (target ≤ 1.2)": t["sharpcli gd"] / t["hand-written gd"],
            "sgd: sharpcli / hand-written (target ≤ 1.2)":
                t["sharpcli sgd (batch 100)"] / t["hand-written sgd (batch 100)"],
            "sam / gd, both sharpcli (target ≤ 2.1)": t["sharpcli sam"] / t["sharpcli gd"],
            "eigen-sam / sam (target ≤ 1.15)":
                t["sharpcli eigen-sam (every 100, 5 iters)"] / t["sharpcli sam"],
            "share of run time in --sharpness-every 20":
                1 - t["sharpcli gd"] / t["sharpcli gd, --sharpness-every 20"],
            "share of run time in sharpness + eval (defaults)":
                1 - t["sharpcli gd"] / t["sharpcli gd, defaults (sharpness + eval every 20)"],
            "gd step: --compile / eager": t["sharpcli gd, --compile"] / t["sharpcli gd"],
            # the first --compile run of the process compiles; later ones reuse its code
            "--compile: seconds to the first step, minus eager's (the process's first compilation)":
                max(FIRST[repr(sorted(dict(compile=True, **m).items()))])
                - statistics.median(FIRST[repr(sorted(m.items()))]),
        }
        headline[name] = ratios
        rows += [[name, steps, k, v * 1e3] for k, v in t.items()]
    shutil.rmtree(root, ignore_errors=True)
    text = [f"## 3. Training cost against a minimal torch loop\n",
            f"`{command_line()}` — {machine_line(args.threads)}\n",
            f"mnist1d, 1000 examples, MSE, float32, T steps per run; mean ms per step over steps 1 … T − 2, "
            f"median of {args.repeats} interleaved repeats. SAM and Eigen-SAM are full-batch "
            "(on gd), ρ = 0.05.\n",
            table(["model", "T", "variant", "ms / step"], rows), "",
            table(["model", "ratio", "value"],
                  [[m, k, v] for m, r in headline.items() for k, v in r.items()])]
    write_section("training" + ("-quick" if args.quick else ""), "\n".join(text))


if __name__ == "__main__":
    main()
