"""`sharp spectrum --model-factory`: models sharpcli never built, trained by plain torch,
against their dense Hessians in float64; float regression targets; a loss of the user's;
`sharpcli.spectrum` in memory; and every bad input as one line with exit 2."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import sharpcli
from tests.helpers import dense_hessian
from tests.runners import assert_one_line_error, sharp

# The user's module, written to a folder of its own and imported as `python -m` would.
USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class LayerNormMLP(nn.Module):
        def __init__(self, d_in=5, width=6, d_out=3):
            super().__init__()
            self.fc1, self.norm = nn.Linear(d_in, width), nn.LayerNorm(width)
            self.fc2 = nn.Linear(width, d_out)

        def forward(self, x):
            return self.fc2(torch.tanh(self.norm(self.fc1(x))))


    class TinyTransformer(nn.Module):
        """One pre-norm block (self-attention + MLP) over a sequence, mean-pooled to a head."""

        def __init__(self, d=4, heads=2, seq=3, classes=3):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.head = nn.Linear(d, classes)

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            x = x + self.mlp(self.norm2(x))
            return self.head(x.mean(dim=1))


    def layernorm_mlp(**kw):
        torch.manual_seed(0)
        return LayerNormMLP(**kw).double()


    def transformer(**kw):
        torch.manual_seed(0)
        return TinyTransformer(**kw).double()


    def huber(outputs, targets):
        return nn.functional.smooth_l1_loss(outputs, nn.functional.one_hot(targets, outputs.shape[-1]).to(outputs.dtype), reduction="sum") / len(outputs)


    def per_example(outputs, targets):
        return ((outputs - 1.0) ** 2).sum(dim=-1)  # not a scalar: an error

    NOT_CALLABLE = 3
''')


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "usermodels.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))  # as the current folder is, for `python -m`
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("usermodels", None)


def trained(model, loss_fn, x, y, steps=30, lr=0.1):
    """A few steps of plain torch SGD: weights sharpcli never saw."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


def top_eigenvalues(model, loss_fn, x, y, k):
    from sharpcli.hessian.params import math_attention

    with math_attention():  # the fused attention kernels cannot be differentiated twice
        return torch.linalg.eigvalsh(dense_hessian(model, loss_fn, x, y)).flip(0)[:k]


def spectrum_values(path, block="all"):
    rows = pd.read_csv(path)
    return torch.tensor(rows[(rows.quantity == "eigenvalue") & (rows.block == block)]["value"].values,
                        dtype=torch.float64)


@pytest.mark.parametrize("factory,kwargs,shape", [
    ("layernorm_mlp", "{\"width\": 7}", (5,)),
    ("transformer", None, (3, 4)),
])
def test_factory_model_against_its_dense_hessian(user_dir, tmp_path, factory, kwargs, shape):
    import usermodels

    from sharpcli.hessian.losses import mse_loss

    model = getattr(usermodels, factory)(**({"width": 7} if kwargs else {}))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    trained(model, mse_loss, x, y)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    args = ["spectrum", "--model-factory", f"usermodels:{factory}", "--weights", tmp_path / "w.pt",
            "--data", tmp_path / "d.npz", "--top-k", "4", "--tol", "1e-10", "--max-iter", "400",
            "--out", tmp_path / "s.csv", "--quiet"]
    if kwargs:
        args += ["--model-kwargs", kwargs]
    sharp(*args).ok()
    truth = top_eigenvalues(model, mse_loss, x, y, 4)
    torch.testing.assert_close(spectrum_values(tmp_path / "s.csv"), truth, rtol=1e-6, atol=1e-9)


def test_float_regression_targets_and_a_custom_loss(user_dir, tmp_path):
    import usermodels

    from sharpcli.hessian.losses import mse_loss

    model = usermodels.layernorm_mlp(d_out=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    targets = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    trained(model, mse_loss, x, targets)
    torch.save({"x": x, "y": targets}, tmp_path / "d.pt")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    common = ["--model-factory", "usermodels:layernorm_mlp", "--model-kwargs", '{"d_out": 2}',
              "--weights", tmp_path / "w.pt", "--top-k", "3", "--tol", "1e-10", "--quiet"]
    sharp("spectrum", *common, "--data", tmp_path / "d.pt", "--out", tmp_path / "r.csv").ok()
    # 0.5‖f − y‖² averaged over examples, by hand
    by_hand = lambda f, t: 0.5 * ((f - t) ** 2).sum(dim=1).mean()  # noqa: E731
    torch.testing.assert_close(spectrum_values(tmp_path / "r.csv"),
                               top_eigenvalues(model, by_hand, x, targets, 3), rtol=1e-6, atol=1e-9)
    # a loss of the user's, on integer labels
    labels = torch.randint(0, 2, (30,), generator=gen)
    np.savez(tmp_path / "c.npz", x=x.numpy(), y=labels.numpy())
    sharp("spectrum", *common, "--data", tmp_path / "c.npz", "--loss", "usermodels:huber",
          "--out", tmp_path / "h.csv").ok()
    torch.testing.assert_close(spectrum_values(tmp_path / "h.csv"),
                               top_eigenvalues(model, usermodels.huber, x, labels, 3),
                               rtol=1e-6, atol=1e-9)


def test_the_python_api_gives_the_rows_of_the_csv(user_dir):
    import usermodels

    model = usermodels.layernorm_mlp()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(25, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (25,), generator=gen)
    rows = sharpcli.spectrum(model, "ce", x, y, top_k=3, tol=1e-10, per_layer=True)
    assert set(rows[0]) == {"checkpoint", "step", "block", "quantity", "index", "value",
                            "residual", "converged", "n_hvp", "note", "seconds"}
    values = torch.tensor([r["value"] for r in rows if r["block"] == "all"], dtype=torch.float64)
    torch.testing.assert_close(values, top_eigenvalues(model, torch.nn.functional.cross_entropy,
                                                       x, y, 3), rtol=1e-6, atol=1e-9)
    assert {r["block"] for r in rows} == {"all", "fc1", "norm", "fc2"}


@pytest.fixture
def files(user_dir, tmp_path):
    import usermodels

    model = usermodels.layernorm_mlp()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    x = torch.randn(10, 5, dtype=torch.float64)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=np.arange(10) % 3)
    np.savez(tmp_path / "big.npz", x=x.numpy(), y=np.arange(10))  # labels up to 9, 3 outputs
    np.savez(tmp_path / "nox.npz", inputs=x.numpy(), y=np.arange(10) % 3)
    torch.save({"fc1.weight": torch.zeros(6, 5)}, tmp_path / "partial.pt")
    return tmp_path


@pytest.mark.parametrize("flags,words", [
    (["--model-factory", "nosuchmodule:f"], ["--model-factory", "cannot import 'nosuchmodule'"]),
    (["--model-factory", "usermodels:nothing"], ["has no 'nothing'"]),
    (["--model-factory", "usermodels:NOT_CALLABLE"], ["not callable"]),
    (["--model-factory", "usermodels"], ["expected MODULE:CALLABLE"]),
    (["--model-factory", "usermodels:layernorm_mlp", "--weights", "{d}/partial.pt"],
     ["weights do not fit", "missing fc1.bias", "norm.weight"]),
    (["--model-factory", "usermodels:layernorm_mlp", "--data", "{d}/nox.npz"],
     ["expected arrays named x and y", "inputs"]),
    (["--model-factory", "usermodels:layernorm_mlp", "--data", "{d}/big.npz"],
     ["labels outside the model's 3 outputs: 3"]),
    (["--model-factory", "usermodels:layernorm_mlp", "--loss", "usermodels:per_example"],
     ["--loss", "scalar"]),
    (["--model-factory", "usermodels:layernorm_mlp", "--model-kwargs", "[1]"], ["JSON object"]),
    (["--model-factory", "usermodels:layernorm_mlp", "--data", "{d}/d.npz", "--dataset", "digits"],
     ["--data FILE or --dataset NAME"]),
    (["--data", "{d}/d.npz"], ["--data", "apply with --model-factory"]),
])
def test_bad_input_is_one_line(files, flags, words):
    flags = [f.format(d=files) for f in flags]
    if "--weights" not in flags:
        flags += ["--weights", str(files / "w.pt")]
    if "--data" not in flags and "--dataset" not in flags and "--model-factory" in flags:
        flags += ["--data", str(files / "d.npz")]
    assert_one_line_error(sharp("spectrum", *flags, "--quiet", "--out", files / "s.csv"), 2, *words)
