"""Every HVP mode of the Hessian operator against dense Hessians (float64)."""

import pytest
import torch

from sharpcli.hessian import HessianOperator
from sharpcli.hessian.losses import ce_loss, mse_loss
from sharpcli.hessian.params import measurement_mode
from tests.helpers import dense_hessian, tiny_bn_net, tiny_cnn, tiny_mlp

LOSSES = {"mse": mse_loss, "ce": ce_loss}


def _data(shape, n=23, classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("hvp", HessianOperator.HVP_MODES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("chunk_size", [23, 7])  # one chunk, and unequal chunks
def test_mode_equals_dense_hessian(hvp, kind, loss, chunk_size):
    model = tiny_mlp() if kind == "mlp" else tiny_cnn()
    x, y = _data((6,) if kind == "mlp" else (1, 6, 6))
    truth = dense_hessian(model, LOSSES[loss], x, y)
    op = HessianOperator(model, LOSSES[loss], x, y, chunk_size=chunk_size, hvp=hvp)
    assert torch.allclose(op.dense(), truth, atol=1e-10, rtol=1e-8)
    assert op.n_matvec == op.size


def test_forward_over_reverse_on_a_block_is_that_block_of_the_hessian():
    model = tiny_mlp()
    x, y = _data((6,))
    truth = dense_hessian(model, mse_loss, x, y)
    first = list(model[0].parameters())
    size = sum(p.numel() for p in first)  # the first layer's weights come first in the flat order
    op = HessianOperator(model, mse_loss, x, y, params=first, hvp="forward-over-reverse")
    assert torch.allclose(op.dense(), truth[:size, :size], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_over_reverse_with_batchnorm_matches_double_backward(mode):
    model = tiny_bn_net()
    x, y = _data((5,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = {hvp: HessianOperator(model, mse_loss, x, y, mode=mode, hvp=hvp).dense()
             for hvp in HessianOperator.HVP_MODES}
    assert torch.allclose(dense["forward-over-reverse"], dense["double-backward"],
                          atol=1e-10, rtol=1e-8)
    with measurement_mode(model, mode):
        truth = dense_hessian(model, mse_loss, x, y)
    assert torch.allclose(dense["forward-over-reverse"], truth, atol=1e-10, rtol=1e-8)
    for k, v in model.state_dict().items():  # running statistics untouched
        assert torch.equal(v, before[k])


def test_unknown_mode_is_refused():
    model = tiny_mlp()
    x, y = _data((6,))
    with pytest.raises(ValueError, match="hvp must be one of"):
        HessianOperator(model, mse_loss, x, y, hvp="finite-differences")
