"""HVP cost: one Hessian-vector product over one gradient on the same data, per model family.

Variants, all of the mean loss over the same examples, timed interleaved in one process:
- gradient: forward + backward (torch.autograd.grad), the unit of cost;
- double backward: forward + backward with create_graph + a second backward (Pearlmutter);
  what HessianOperator does when the examples span several chunks;
- double backward, cached graph: the second backward only, on a graph built once; what
  HessianOperator does when all examples fit in one chunk (the default up to 4096);
- forward-over-reverse: torch.func.jvp of torch.func.grad (forward-mode through the
  gradient computation; no graph can be kept between products);
- HessianOperator.matvec in each of its modes, the library path with its flat-vector
  bookkeeping.
Each product is checked against the double-backward one before timing.

Blocks (second table): HessianOperator.matmat with batched passes (vectorize=True:
is_grads_batched through the cached graph) for blocks of b = 1, 2, 4, 8, 16 vectors, per
vector, against one matvec; and the forward-over-reverse product vmapped over a block of 8.
Compiled (third table, the MLPs): the forward-over-reverse product through torch.compile
(double backward cannot be compiled), its first call (the compilation) and then per product.

`--device cuda` measures instead ResNet-18 (width 64, as for CIFAR) on a CIFAR-shaped
synthetic batch of 512: the GPU case where a block should pay, with a synchronisation
after every timed call.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.func import functional_call, grad, jvp

from common import base_parser, command_line, interleaved, machine_line, setup, table, write_section
from sharpcli.workload.data import load_dataset
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.losses import mse_loss
from sharpcli.workload.models import build_model
from sharpcli.hessian.params import flatten, trainable_params, unflatten

FAMILIES = {
    # name: (data set, examples, model, width, depth)
    "mlp 15k (default)": ("mnist1d", 1000, "mlp", 100, 2),
    "mlp 0.3M": ("mnist1d", 1000, "mlp", 500, 2),
    "cnn 20k (1-D)": ("mnist1d", 1000, "cnn", 64, 2),
    "cnn 40k (2-D)": ("digits", 1000, "cnn", 64, 2),
    "resnet18 w8 (BN, eval)": ("digits", 256, "resnet18", 8, 2),
}
BLOCK_FAMILIES = ("mlp 15k (default)", "mlp 0.3M", "cnn 20k (1-D)", "resnet18 w8 (BN, eval)")
QUICK = {
    "mlp": ("mnist1d", 200, "mlp", 50, 2),
    "cnn": ("mnist1d", 200, "cnn", 16, 2),
    "resnet18 w4": ("digits", 64, "resnet18", 4, 2),
}


def variants(model, x, y):
    params = trainable_params(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    v = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(x.device)
    vs = unflatten(v, params)

    def loss_of(pdict):
        return mse_loss(functional_call(model, pdict, (x,)), y)

    primals = {k: p.detach() for k, p in zip(names, params)}
    tangents = dict(zip(names, vs))

    def gradient():
        loss = mse_loss(model(x), y)
        return flatten(torch.autograd.grad(loss, params))

    def double_backward():
        loss = mse_loss(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        return flatten(torch.autograd.grad(g, params, grad_outputs=vs))

    def forward_over_reverse():
        _, hv = jvp(grad(loss_of), (primals,), (tangents,))
        return flatten([hv[k] for k in names])

    ops = {mode: HessianOperator(model, mse_loss, x, y, hvp=mode)
           for mode in HessianOperator.HVP_MODES}
    uncached = HessianOperator(model, mse_loss, x, y, cache_graph=False)
    cached_graph = ops["double-backward"]

    fns = {"gradient": gradient, "double backward": double_backward,
           "double backward, cached graph": lambda: cached_graph.matvec(v),
           "forward-over-reverse": forward_over_reverse,
           "operator, double backward (uncached)": lambda: uncached.matvec(v)}
    for mode, op in ops.items():
        if mode != "double-backward":
            fns[f"operator, {mode}"] = (lambda o: lambda: o.matvec(v))(op)
    ref = double_backward()
    for name, fn in fns.items():
        if name != "gradient":
            out = fn()
            err = float((out - ref).norm() / ref.norm())
            if err > 1e-4:
                print(f"  {name}: relative difference {err:.2e} from double backward",
                      file=sys.stderr)
    return n, fns


BLOCKS = (1, 2, 4, 8, 16)


def block_rows(fam, model, x, y, repeats, device="cpu"):
    """Per-vector ms of batched blocks against single products, one family."""
    single = HessianOperator(model, mse_loss, x, y, vectorize=False)
    batched = HessianOperator(model, mse_loss, x, y, vectorize=True)
    fo_r = HessianOperator(model, mse_loss, x, y, hvp="forward-over-reverse", vectorize=True)
    gen = torch.Generator().manual_seed(0)
    blocks = {b: torch.randn(single.size, b, generator=gen).to(device) for b in BLOCKS}
    v = blocks[1][:, 0]
    ref = single.matmat(blocks[8])
    for op in (batched, fo_r):
        err = float((op.matmat(blocks[8]) - ref).norm() / ref.norm())
        assert err < 1e-4 and op.fallback is None, (err, op.fallback)
    fns = {"matvec": lambda: single.matvec(v)}
    for b in BLOCKS:
        fns[f"block {b}"] = (lambda V: lambda: batched.matmat(V))(blocks[b])
    fns["forward-over-reverse, matvec"] = lambda: fo_r.matvec(v)
    fns["forward-over-reverse, vmap block 8"] = lambda: fo_r.matmat(blocks[8])
    t = interleaved(synchronised(fns, device), repeats, warmup=1)
    print(fam, {k: f"{v * 1e3:.2f} ms" for k, v in t.items()}, file=sys.stderr)
    one, one_fr = t["matvec"], t["forward-over-reverse, matvec"]
    rows = [[fam, "double backward (cached graph)", b, t[f"block {b}"] / b * 1e3,
             t[f"block {b}"] / b / one] for b in BLOCKS]
    rows.append([fam, "forward-over-reverse, vmap", 8, t["forward-over-reverse, vmap block 8"] / 8 * 1e3,
                 t["forward-over-reverse, vmap block 8"] / 8 / one_fr])
    return rows


def compiled_rows(fam, model, x, y, repeats):
    """The forward-over-reverse product through torch.compile against the default."""
    default = HessianOperator(model, mse_loss, x, y)
    compiled = HessianOperator(model, mse_loss, x, y, hvp="forward-over-reverse", compile=True)
    v = torch.randn(default.size, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    out = compiled.matvec(v)
    first = time.perf_counter() - t0
    ref = default.matvec(v)
    assert float((out - ref).norm() / ref.norm()) < 1e-4
    t = interleaved({"default": lambda: default.matvec(v), "compiled": lambda: compiled.matvec(v)},
                    repeats, warmup=1)
    return [[fam, first, t["default"] * 1e3, t["compiled"] * 1e3, t["compiled"] / t["default"]]]


GPU_FAMILIES = {"resnet18 w64 (CIFAR-shaped, 512)": ("cifar-shaped", 512, "resnet18", 64, 2)}


def examples(dataset: str, n_ex: int, device: str):
    """(x, y, input shape, classes): a data set's first n_ex, or a synthetic CIFAR-shaped batch."""
    if dataset == "cifar-shaped":
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n_ex, 3, 32, 32, generator=gen)
        return x.to(device), torch.randint(0, 10, (n_ex,), generator=gen).to(device), (3, 32, 32), 10
    data = load_dataset(dataset, train_size=n_ex, test_size=10, device=device)
    return data.x_train, data.y_train, data.input_shape, data.num_classes


def synchronised(fns: dict, device: str) -> dict:
    """On a GPU a call returns before its kernels finish: wait for them inside the timing."""
    if device == "cpu":
        return fns
    return {k: (lambda f: lambda: (f(), torch.cuda.synchronize()))(f) for k, f in fns.items()}


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile table")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: ResNet-18 on CIFAR-shaped "
                   "batches of 512 (module docstring)")
    args = p.parse_args()
    setup(args.threads)
    families = QUICK if args.quick else GPU_FAMILIES if args.device != "cpu" else FAMILIES
    rows, blocks, compiled = [], [], []
    for fam, (dataset, n_ex, model_name, width, depth) in families.items():
        x, y, input_shape, classes = examples(dataset, n_ex, args.device)
        torch.manual_seed(0)
        model = build_model(model_name, input_shape, classes, width=width,
                            depth=depth).to(args.device).eval()
        n, fns = variants(model, x, y)
        fns = synchronised(fns, args.device)
        t = interleaved(fns, args.repeats, warmup=2)
        print(fam, {k: f"{v * 1e3:.2f} ms" for k, v in t.items()}, file=sys.stderr)
        base = t["gradient"]
        for name, sec in t.items():
            rows.append([fam, f"{n:,}", n_ex, name, sec * 1e3, sec / base])
        if fam in BLOCK_FAMILIES or fam in GPU_FAMILIES or args.quick:
            blocks += block_rows(fam, model, x, y, max(3, args.repeats // 2), args.device)
        if not args.no_compile and (fam.startswith("mlp") or args.quick and fam == "mlp"):
            compiled += compiled_rows(fam, model, x, y, args.repeats)
    text = [f"## 2. HVP cost: one Hessian-vector product over one gradient\n",
            f"`{command_line()}` — {machine_line(args.threads)}\n",
            "Models at initialisation (PyTorch default), eval mode, MSE loss, float32; "
            f"medians of {args.repeats} interleaved repeats. `ratio` = time / time of one "
            "gradient (forward + backward) on the same examples.\n",
            table(["model", "parameters", "examples", "variant", "ms", "ratio"], rows),
            "\n### Blocks of products: cost per vector\n",
            "`HessianOperator.matmat` with batched passes, ms per vector and the ratio to one "
            "product of the same kind (below 1: the block is cheaper per vector). On this CPU "
            "with one thread a product already keeps the core busy: the GPU is where a block "
            "should pay, and no GPU was available to this session.\n",
            table(["model", "product", "block b", "ms per vector", "× one product"], blocks)]
    if compiled:
        text += ["\n### torch.compile\n",
                 "The forward-over-reverse product through torch.compile (double backward cannot "
                 "be compiled: `torch.compile with aot_autograd does not currently support double "
                 "backward`) against the default product (double backward, cached graph).\n",
                 table(["model", "first call (compilation), s", "default ms", "compiled ms",
                        "compiled / default"], compiled)]
    write_section("hvp" + ("-quick" if args.quick else ""), "\n".join(text))


if __name__ == "__main__":
    main()
