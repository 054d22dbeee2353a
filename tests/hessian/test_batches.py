"""The Hessian core on data as PyTorch code holds it — dict inputs, outputs holding
`logits`, a per-token loss with -100 padding, streamed batches — against dense float64
Hessians of the same token-mean objective taken all at once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sharpcli.errors import SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.calls import Call, masked_accuracy
from sharpcli.hessian.check import check_objective
from sharpcli.hessian.ggn import GaussNewtonPart, gauss_newton_unavailable
from sharpcli.hessian.losses import mse_loss
from sharpcli.hessian.objective import evaluate, full_batch_gradient
from sharpcli.sources import as_data
from tests import token_cases as tc
from tests.cases import MLP_MSE
from tests.helpers import dense_hessian, dense_hessian_of


@pytest.fixture(scope="module")
def truth():
    """The token-mean Hessian and gradient over all 7 sequences in one call."""
    model = tc.model()
    ids, mask, labels = tc.sequences()
    h = dense_hessian_of(model, lambda out: tc.token_loss(out, labels), ids=ids, mask=mask)
    model.zero_grad()
    tc.token_loss(model(ids=ids, mask=mask), labels).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad()
    return h, g


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_token_mean_hessian_does_not_depend_on_the_batching(truth, batch_size):
    model = tc.model()
    op = HessianOperator(model, tc.token_loss, as_data(tc.batches(batch_size), num_terms=tc.tokens))
    torch.testing.assert_close(op.dense(), truth[0], rtol=1e-10, atol=1e-12)


def test_weighting_by_sequences_is_another_objective(truth):
    """Without num_terms each batch weighs its sequences, not its tokens: the fault the data
    layer's weighting removes."""
    op = HessianOperator(tc.model(), tc.token_loss, as_data(tc.batches(1)))
    assert (op.dense() - truth[0]).abs().max() > 1e-3


def test_gradient_and_loss_of_a_stream(truth):
    model = tc.model()
    ids, mask, labels = tc.sequences()
    loss, grad = full_batch_gradient(model, tc.token_loss, as_data(tc.batches(3), num_terms=tc.tokens))
    torch.testing.assert_close(grad, truth[1], rtol=1e-12, atol=1e-14)
    assert loss == pytest.approx(float(tc.token_loss(model(ids=ids, mask=mask), labels).detach()),
                                 rel=1e-12)


def test_a_data_loader_of_dict_batches(truth):
    ids, mask, labels = tc.sequences()
    rows = [({"ids": i, "mask": m}, l) for i, m, l in zip(ids, mask, labels)]
    loader = DataLoader(rows, batch_size=2)  # default collate stacks the dicts
    op = HessianOperator(tc.model(), tc.token_loss, as_data(loader, num_terms=tc.tokens))
    torch.testing.assert_close(op.dense(), truth[0], rtol=1e-10, atol=1e-12)


def test_forward_over_reverse_on_dict_batches_equals_double_backward():
    model = tc.model()
    data = as_data(tc.batches(3), num_terms=tc.tokens)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    a = HessianOperator(model, tc.token_loss, data).matvec(v)
    b = HessianOperator(model, tc.token_loss, data, hvp="forward-over-reverse").matvec(v)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_closure_forward_and_tuple_conventions_give_the_same_hessian(truth):
    def closure(m, batch):
        return tc.token_loss(m(**batch[0]), batch[1])

    def forward(m, batch):
        return m(batch[0]["ids"], batch[0]["mask"])

    tuples = [((b[0]["ids"], b[0]["mask"]), b[1]) for b in tc.batches(3)]
    for call, batches in [(Call(batch_loss=closure), tc.batches(3)),
                          (Call(tc.token_loss, forward=forward), tc.batches(3)),
                          (Call(tc.token_loss), tuples)]:
        op = HessianOperator(tc.model(), call, as_data(batches, num_terms=tc.tokens))
        torch.testing.assert_close(op.dense(), truth[0], rtol=1e-10, atol=1e-12)


def test_evaluation_reads_logits_and_skips_padding():
    model = tc.model()
    ids, mask, labels = tc.sequences()
    loss, acc = evaluate(model, tc.token_loss, as_data(tc.batches(2), num_terms=tc.tokens))
    logits = model(ids=ids, mask=mask)["logits"]
    keep = labels != -100
    hand = int(((logits.argmax(-1) == labels) & keep).sum()) / int(keep.sum())
    assert acc == pytest.approx(hand, rel=1e-12)
    assert loss == pytest.approx(float(tc.token_loss({"logits": logits}, labels).detach()), rel=1e-12)
    # a closure's targets are its own business: no accuracy
    _, acc = evaluate(model, Call(batch_loss=lambda m, b: tc.token_loss(m(**b[0]), b[1])),
                      as_data(tc.batches(2), num_terms=tc.tokens))
    assert acc is None


def test_masked_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]]])
    assert float(masked_accuracy(logits, torch.tensor([[0, 0, -100]]))) == 0.5
    assert float(masked_accuracy(logits[0], torch.tensor([0, 1, 1]))) == pytest.approx(2 / 3)


def test_gauss_newton_trace_of_a_stream_of_tensor_pairs():
    model, loss_fn, x, y = MLP_MSE()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    streamed = GaussNewtonPart(model, loss_fn, as_data(loader)).trace()
    in_memory = GaussNewtonPart(model, loss_fn, x, y).trace()
    assert streamed == pytest.approx(in_memory, rel=1e-12)
    h = dense_hessian(model, loss_fn, x, y)
    assert h.trace() > 0


def test_gauss_newton_says_why_it_cannot_apply():
    data = as_data(tc.batches(3), num_terms=tc.tokens)
    assert "num_terms" in gauss_newton_unavailable(Call(tc.token_loss), data)
    closure = Call(batch_loss=lambda m, b: m(b[0]).sum())
    assert "batch_loss" in gauss_newton_unavailable(closure, as_data(torch.ones(3, 2), torch.ones(3)))
    with pytest.raises(ValueError, match="per-example outputs"):
        GaussNewtonPart(tc.model(), tc.token_loss, data)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, a, b):
        return self.lin(a + b)


@pytest.mark.parametrize("model, batch, loss, words", [
    (TwoInputs(), ({"a": torch.ones(2, 3), "c": torch.ones(2, 3)}, torch.zeros(2).long()), mse_loss,
     ["cannot take a batch of {'a': Tensor(2, 3) float32, 'c': Tensor(2, 3) float32}",
      "model(**inputs)"]),
    (TwoInputs(), (torch.ones(2, 3), torch.zeros(2).long()), mse_loss,
     ["cannot take a batch of Tensor(2, 3) float32 as model(inputs)"]),
    (nn.Linear(3, 2), (torch.ones(2, 3), torch.tensor([0, 2])), mse_loss,
     ["labels outside the model's 2 outputs: 2"]),
    (nn.Linear(3, 2), (torch.ones(2, 3), torch.tensor([0, 1])), lambda o, y: o.sum(dim=1),
     ["loss_fn must return a scalar tensor", "(2,)"]),
    (nn.Linear(3, 2), torch.ones(2, 3), mse_loss, ["not an (inputs, targets) pair", "batch_loss"]),
])
def test_bad_problems_are_one_line_errors(model, batch, loss, words):
    with pytest.raises(SharpError) as err:
        check_objective(model, Call(loss), as_data([batch]))
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_padding_labels_pass_the_check():
    check_objective(nn.Linear(3, 2), Call("ce"), as_data(torch.ones(2, 3), torch.tensor([1, -100])))


def test_the_check_leaves_mode_buffers_and_rng_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    stats = model[1].running_mean.clone()
    data = as_data(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    state = torch.get_rng_state()
    check_objective(model, Call("ce"), data)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, stats) and int(model[1].num_batches_tracked) == 0
    assert torch.equal(torch.get_rng_state(), state)
