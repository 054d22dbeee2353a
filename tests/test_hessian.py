"""The Hessian operator against dense Hessians from torch.autograd.functional.hessian."""

import pytest
import torch

from sharpcli.hessian import HessianOperator
from sharpcli.hessian.losses import ce_loss, mse_loss
from sharpcli.hessian.objective import full_batch_gradient
from sharpcli.hessian.params import measurement_mode, trainable_params
from tests.helpers import dense_hessian, tiny_bn_net, tiny_cnn, tiny_mlp

LOSSES = {"mse": mse_loss, "ce": ce_loss}


def _data(kind: str, n: int = 23, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 6) if kind == "mlp" else (n, 1, 6, 6)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("chunk_size", [23, 7, 10])  # one chunk (cached graph), and unequal chunks
def test_operator_equals_dense_hessian(kind, loss, chunk_size):
    model = tiny_mlp() if kind == "mlp" else tiny_cnn()
    x, y = _data(kind)
    truth = dense_hessian(model, LOSSES[loss], x, y)
    op = HessianOperator(model, LOSSES[loss], x, y, chunk_size=chunk_size)
    assert op.size == truth.shape[0]
    assert torch.allclose(op.dense(), truth, atol=1e-10, rtol=1e-8)


def test_unequal_chunks_weight_each_example_equally():
    # The naive alternative, averaging per-chunk Hessians, over-weights the short last chunk:
    # with chunks of 20 and 3 it differs from the truth, ours does not.
    model = tiny_mlp()
    x, y = _data("mlp")
    truth = dense_hessian(model, mse_loss, x, y)
    naive = (dense_hessian(model, mse_loss, x[:20], y[:20]) + dense_hessian(model, mse_loss, x[20:], y[20:])) / 2
    assert not torch.allclose(naive, truth, atol=1e-6)
    assert torch.allclose(HessianOperator(model, mse_loss, x, y, chunk_size=20).dense(), truth, atol=1e-10)


def test_matvec_counts_and_shape_checks():
    model = tiny_mlp()
    x, y = _data("mlp")
    op = HessianOperator(model, mse_loss, x, y)
    op.matvec(torch.ones(op.size, dtype=torch.float64))
    op.matvec(torch.ones(op.size, dtype=torch.float64))
    assert op.n_matvec == 2
    with pytest.raises(ValueError):
        op.matvec(torch.ones(op.size + 1, dtype=torch.float64))


def test_per_block_operator_is_the_dense_sub_block():
    model = tiny_mlp()
    x, y = _data("mlp")
    truth = dense_hessian(model, ce_loss, x, y)
    params = trainable_params(model)
    sizes = [p.numel() for p in params]
    start = sum(sizes[:2])  # the second Linear layer: weight and bias
    block = params[2:4]
    n = sum(p.numel() for p in block)
    op = HessianOperator(model, ce_loss, x, y, chunk_size=9, params=block)
    assert torch.allclose(op.dense(), truth[start:start + n, start:start + n], atol=1e-10)


def test_gradient_matches_autograd_and_chunking():
    model = tiny_mlp()
    x, y = _data("mlp")
    loss1, g1 = full_batch_gradient(model, ce_loss, x, y, chunk_size=23)
    loss2, g2 = full_batch_gradient(model, ce_loss, x, y, chunk_size=4)
    model.zero_grad()
    ref = ce_loss(model(x), y)
    ref.backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert abs(loss1 - ref.item()) < 1e-12 and abs(loss2 - ref.item()) < 1e-12
    assert torch.allclose(g1, g_ref, atol=1e-12) and torch.allclose(g2, g_ref, atol=1e-12)


def test_batchnorm_eval_mode_uses_running_stats_and_restores_state():
    model = tiny_bn_net()
    x, y = _data("mlp", n=16)
    x = x[:, :5]
    model.train()
    for _ in range(3):  # give the running statistics non-trivial values
        model(x * 2 + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, mse_loss, x, y, chunk_size=5, mode="eval")
    h = op.dense()
    assert model.training, "the operator must leave the model in the mode it found"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    with measurement_mode(model, "eval"):
        truth = dense_hessian(model, mse_loss, x, y)
    assert torch.allclose(h, truth, atol=1e-10)


def test_batchnorm_train_mode_uses_chunk_statistics_and_keeps_buffers():
    model = tiny_bn_net()
    x, y = _data("mlp", n=12)
    x = x[:, :5]
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, mse_loss, x, y, chunk_size=12, mode="train")
    h = op.dense()
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    # Ground truth: batch statistics of the whole (single) chunk, dropout off.
    model.train()
    model[3].eval()
    truth = dense_hessian(model, mse_loss, x, y)
    model.eval()
    assert torch.allclose(h, truth, atol=1e-10)
