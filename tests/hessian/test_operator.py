"""The Hessian operator, in each of its HVP modes, against dense Hessians from
torch.autograd.functional.hessian (float64)."""

import pytest
import torch

from sharpcli.hessian import HessianOperator
from sharpcli.hessian.losses import ce_loss, mse_loss
from sharpcli.hessian.objective import full_batch_gradient
from sharpcli.hessian.params import measurement_mode, trainable_params
from tests.cases import BN_MSE, CNN_CE, MLP_CE, MLP_MSE, N
from tests.helpers import dense_hessian

# 15 splits the N = 23 examples into unequal chunks of 15 and 8.
CHUNKINGS = {"one-chunk": N, "chunks-15-8": 15}


@pytest.mark.parametrize("chunk_size", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_operator_equals_dense_hessian(case, chunk_size):
    """Double backward: through one cached graph (a single chunk), or chunk by chunk."""
    model, loss_fn, x, y = case()
    truth = dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size)
    assert op.size == truth.shape[0]
    assert torch.allclose(op.dense(), truth, atol=1e-10, rtol=1e-8)
    assert op.n_matvec == op.size


# Forward-over-reverse has one code path whatever the model and loss (torch.func over
# functional_call), and its products cost several double-backward ones: these two cases
# between them use every layer and loss of the shared cases.
@pytest.mark.parametrize("case", [MLP_MSE, CNN_CE], ids=lambda case: case.name)
def test_forward_over_reverse_equals_dense_hessian(case):
    model, loss_fn, x, y = case()
    truth = dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, x, y, chunk_size=CHUNKINGS["chunks-15-8"],
                         hvp="forward-over-reverse")
    assert torch.allclose(op.dense(), truth, atol=1e-10, rtol=1e-8)
    assert op.n_matvec == op.size


def test_unequal_chunks_weight_each_example_equally():
    # The naive alternative, averaging per-chunk Hessians, over-weights the short last chunk:
    # with chunks of 20 and 3 it differs from the truth, ours does not.
    model, _, x, y = MLP_MSE()
    truth = dense_hessian(model, mse_loss, x, y)
    naive = (dense_hessian(model, mse_loss, x[:20], y[:20]) + dense_hessian(model, mse_loss, x[20:], y[20:])) / 2
    assert not torch.allclose(naive, truth, atol=1e-6)
    assert torch.allclose(HessianOperator(model, mse_loss, x, y, chunk_size=20).dense(), truth, atol=1e-10)


def test_matvec_counts_and_shape_checks():
    model, _, x, y = MLP_MSE()
    op = HessianOperator(model, mse_loss, x, y)
    op.matvec(torch.ones(op.size, dtype=torch.float64))
    op.matvec(torch.ones(op.size, dtype=torch.float64))
    assert op.n_matvec == 2
    with pytest.raises(ValueError):
        op.matvec(torch.ones(op.size + 1, dtype=torch.float64))


def test_unknown_mode_is_refused():
    model, _, x, y = MLP_MSE()
    with pytest.raises(ValueError, match="hvp must be one of"):
        HessianOperator(model, mse_loss, x, y, hvp="finite-differences")


@pytest.mark.parametrize("hvp", HessianOperator.HVP_MODES)
def test_per_block_operator_is_the_dense_sub_block(hvp):
    model, _, x, y = MLP_CE()
    truth = dense_hessian(model, ce_loss, x, y)
    params = trainable_params(model)
    sizes = [p.numel() for p in params]
    start = sum(sizes[:2])  # the second Linear layer: weight and bias
    block = params[2:4]
    n = sum(p.numel() for p in block)
    op = HessianOperator(model, ce_loss, x, y, chunk_size=15, params=block, hvp=hvp)
    assert torch.allclose(op.dense(), truth[start:start + n, start:start + n], atol=1e-10)


def test_gradient_matches_autograd_and_chunking():
    model, _, x, y = MLP_CE()
    loss1, g1 = full_batch_gradient(model, ce_loss, x, y, chunk_size=N)
    loss2, g2 = full_batch_gradient(model, ce_loss, x, y, chunk_size=4)
    model.zero_grad()
    ref = ce_loss(model(x), y)
    ref.backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert abs(loss1 - ref.item()) < 1e-12 and abs(loss2 - ref.item()) < 1e-12
    assert torch.allclose(g1, g_ref, atol=1e-12) and torch.allclose(g2, g_ref, atol=1e-12)


# --- BatchNorm: which statistics the Hessian is of, and buffers left alone ------------------

def test_batchnorm_eval_mode_uses_running_stats_and_restores_state():
    model, _, x, y = BN_MSE(n=16)
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
    model, _, x, y = BN_MSE(n=12)
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


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_over_reverse_with_batchnorm_matches_double_backward(mode):
    model, _, x, y = BN_MSE()
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


# --- blocks of products: matmat -------------------------------------------------------------

BLOCK = 5  # columns of the test blocks; max_block 2 cuts them into passes of 2, 2 and 1


@pytest.mark.parametrize("hvp", HessianOperator.HVP_MODES)
@pytest.mark.parametrize("chunk_size", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_matmat_equals_columns_and_dense_hessian(case, chunk_size, hvp):
    """Batched passes (autograd's is_grads_batched, or vmap over forward-over-reverse) give
    the products of the columns one by one, and the dense Hessian's."""
    model, loss_fn, x, y = case()
    truth = dense_hessian(model, loss_fn, x, y)
    vs = torch.randn(truth.shape[0], BLOCK, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, hvp=hvp, vectorize=True,
                         max_block=2)
    block = op.matmat(vs)
    columns = torch.stack([op.matvec(v) for v in vs.T], dim=1)
    assert op.fallback is None and op.n_matvec == 2 * BLOCK
    assert torch.allclose(block, columns, atol=1e-12, rtol=1e-10)
    assert torch.allclose(block, truth @ vs, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("hvp", HessianOperator.HVP_MODES)
def test_matmat_with_batchnorm_in_either_mode(mode, hvp):
    """BatchNorm batches in measurement mode (running statistics are not written, so vmap
    has no in-place update to refuse): no fallback, the dense block, buffers untouched."""
    model, _, x, y = BN_MSE()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with measurement_mode(model, mode):
        truth = dense_hessian(model, mse_loss, x, y)
    op = HessianOperator(model, mse_loss, x, y, mode=mode, hvp=hvp, vectorize=True)  # one chunk
    vs = torch.randn(op.size, BLOCK, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(op.matmat(vs), truth @ vs, atol=1e-10, rtol=1e-8)
    assert op.fallback is None
    # chunks of 15 and 8: in train mode each chunk has its own statistics, column or block
    op = HessianOperator(model, mse_loss, x, y, chunk_size=15, mode=mode, hvp=hvp, vectorize=True)
    columns = torch.stack([op.matvec(v) for v in vs.T], dim=1)
    assert torch.allclose(op.matmat(vs), columns, atol=1e-12, rtol=1e-10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class _CheckedTanh(torch.autograd.Function):
    """tanh whose backward checks its input with Python control flow, as user code does:
    fine one vector at a time, impossible to batch (vmap cannot branch on a value)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        if not bool(torch.isfinite(grad).all()):
            raise FloatingPointError("non-finite gradient")
        return grad * (1 - y * y)


class _CheckedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(_CheckedTanh.apply(self.fc1(x)))


@pytest.mark.filterwarnings("ignore:batched Hessian-vector products are not possible")
@pytest.mark.parametrize("chunk_size", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_matmat_falls_back_to_columns_without_a_batching_rule(chunk_size):
    _, _, x, y = MLP_MSE()
    torch.manual_seed(0)
    model = _CheckedNet().double()
    plain = torch.nn.Sequential(model.fc1, torch.nn.Tanh(), model.fc2)  # the same function
    truth = dense_hessian(plain, mse_loss, x, y)
    op = HessianOperator(model, mse_loss, x, y, chunk_size=chunk_size, vectorize=True)
    vs = torch.randn(op.size, BLOCK, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(op.matmat(vs), truth @ vs, atol=1e-10, rtol=1e-8)
    assert not op.vectorize and "RuntimeError" in op.fallback  # said why, and stays with columns
    assert torch.allclose(op.matmat(vs[:, :2]), truth @ vs[:, :2], atol=1e-10, rtol=1e-8)
    assert op.n_matvec == BLOCK + 2


def test_the_fallback_is_warned_about_once_with_its_reason(monkeypatch):
    """(Old main fell back silently.)"""
    import sharpcli.hessian.operator as operator

    monkeypatch.setattr(operator, "_WARNED", set(), raising=False)
    _, _, x, y = MLP_MSE()
    model = _CheckedNet().double()
    vs = torch.randn(53, BLOCK, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.warns(UserWarning, match="one vector at a time.*RuntimeError") as caught:
        for _ in range(3):  # three operators, as three measurements build
            HessianOperator(model, mse_loss, x, y, vectorize=True).matmat(vs)
    assert len([w for w in caught if "one vector at a time" in str(w.message)]) == 1


def test_out_of_memory_halves_the_block_and_says_so(monkeypatch):
    """A batched pass of more than 4 vectors runs out of memory: the block is halved until
    it fits (the same products), and one warning says so; out of memory one vector at a
    time is raised. (Old main caught it as any RuntimeError and went on silently.)"""
    import sharpcli.hessian.operator as operator

    monkeypatch.setattr(operator, "_WARNED", set(), raising=False)
    model, loss_fn, x, y = MLP_MSE()
    truth = dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, x, y, vectorize=True, max_block=8)
    real = op._local

    def local(vs, batched):
        if batched and len(vs[0]) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(vs, batched)

    monkeypatch.setattr(op, "_local", local)
    vs = torch.randn(op.size, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with pytest.warns(UserWarning, match="ran out of memory; halving.*Tried to allocate"):
        assert torch.allclose(op.matmat(vs), truth @ vs, atol=1e-10, rtol=1e-8)
    assert op.max_block == 3 and op.vectorize and op.fallback is None  # 7 = 3 + 4

    def no_memory(vs, batched):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(op, "_local", no_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        op.matmat(vs)


def test_per_block_matmat_is_the_dense_sub_block():
    model, _, x, y = CNN_CE()
    truth = dense_hessian(model, ce_loss, x, y)
    params = trainable_params(model)
    start = sum(p.numel() for p in params[:2])  # the second convolution: weight and bias
    n = sum(p.numel() for p in params[2:4])
    op = HessianOperator(model, ce_loss, x, y, params=params[2:4], vectorize=True)
    vs = torch.randn(n, BLOCK, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.allclose(op.matmat(vs), truth[start:start + n, start:start + n] @ vs, atol=1e-10)


def test_matmat_shape_checks_and_cpu_default():
    model, _, x, y = MLP_MSE()
    op = HessianOperator(model, mse_loss, x, y)
    assert not op.vectorize  # on the CPU a batched pass is no faster per vector (RESULTS.md §2)
    with pytest.raises(ValueError, match="block of shape"):
        op.matmat(torch.ones(op.size, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_block"):
        HessianOperator(model, mse_loss, x, y, max_block=0)


def test_compiled_forward_over_reverse_equals_double_backward(monkeypatch):
    """compile=True traces the product with torch.compile; the graph capture is what we test
    (the "eager" backend: Inductor's code generation costs tens of seconds per shape)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", **kw))
    model, _, x, y = MLP_MSE()
    op = HessianOperator(model, mse_loss, x, y, chunk_size=15, hvp="forward-over-reverse",
                         compile=True)
    reference = HessianOperator(model, mse_loss, x, y)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(op.matvec(v), reference.matvec(v), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="cannot differentiate twice"):
        HessianOperator(model, mse_loss, x, y, compile=True)
