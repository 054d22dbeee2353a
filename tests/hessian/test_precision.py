"""Measurements in full precision whatever encloses them: autocast off and TF32 off inside,
the caller's settings back afterwards."""

import torch

from sharpcli.hessian.objective import evaluate
from sharpcli.hessian.params import full_precision
from sharpcli.hessian.sharpness import measure_sharpness
from tests.cases import CNN_CE


def _tf32_flags():
    b = torch.backends
    if hasattr(b.cudnn, "conv") and hasattr(b.cudnn.conv, "fp32_precision"):
        return b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32


def test_full_precision_turns_autocast_and_tf32_off_and_restores_them():
    before = _tf32_flags()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with full_precision():
            assert not torch.is_autocast_enabled("cpu")
            assert _tf32_flags() in (("ieee", "ieee"), (False, False))
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    assert _tf32_flags() == before


def test_measurements_under_an_enclosing_bf16_autocast_are_the_fp32_ones():
    model, loss_fn, x, y = CNN_CE(dtype=torch.float32)
    plain = measure_sharpness(model, loss_fn, x, y, tol=1e-6, seed=0)
    plain_eval = evaluate(model, loss_fn, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = measure_sharpness(model, loss_fn, x, y, tol=1e-6, seed=0)
        inside_eval = evaluate(model, loss_fn, x, y)
    assert inside.value == plain.value and inside.n_hvp == plain.n_hvp
    assert inside_eval == plain_eval
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what it would be without the guard
        assert model(x).dtype == torch.bfloat16
