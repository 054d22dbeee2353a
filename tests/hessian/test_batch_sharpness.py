"""Batch sharpness E_B[g_Bᵀ H_B g_B / ‖g_B‖²] against a dense computation over every batch of a
tiny data set: enumerating all C(n, b) batches makes the expectation over uniform batches
exact and the sampling deterministic."""

import itertools
import math

import pytest
import torch

from sharpcli.hessian.batch_sharpness import batch_sharpness, random_batches
from tests.cases import CNN_CE, MLP_MSE
from tests.helpers import dense_hessian

N, B = 7, 3  # 35 batches


def dense_curvature(model, loss_fn, x, y) -> float:
    """g_Bᵀ H_B g_B / ‖g_B‖² from the dense Hessian of the batch's mean loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_fn(model(x), y), params)])
    return float(g @ dense_hessian(model, loss_fn, x, y) @ g / (g @ g))


@pytest.mark.parametrize("case", [MLP_MSE, CNN_CE], ids=lambda c: c.name)
def test_equals_dense_mean_over_every_batch(case):
    model, loss_fn, x, y = case(n=N)
    batches = [torch.tensor(c) for c in itertools.combinations(range(N), B)]
    values = [dense_curvature(model, loss_fn, x[i], y[i]) for i in batches]
    mean = sum(values) / len(values)
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    # tol 0: no early stop; chunks of 2 split each batch of 3 unevenly
    got = batch_sharpness(model, loss_fn, x, y, batches, tol=0.0, max_batches=len(batches),
                          chunk_size=2)
    assert got.n_batches == len(batches) == 35
    assert got.value == pytest.approx(mean, rel=1e-10)
    assert got.stderr == pytest.approx(stderr, rel=1e-8)


def test_stops_at_the_standard_error_or_the_batch_limit():
    model, loss_fn, x, y = MLP_MSE(n=20)
    loose = batch_sharpness(model, loss_fn, x, y, random_batches(20, 5, seed=0, step=0), tol=10.0)
    assert loose.n_batches == 10  # at least 10 batches before the standard error is trusted
    strict = batch_sharpness(model, loss_fn, x, y, random_batches(20, 5, seed=0, step=0),
                             tol=0.0, max_batches=25)
    assert strict.n_batches == 25


def test_random_batches_are_fresh_and_seeded_by_seed_and_step():
    def first(seed, step, k=5):
        return [b.tolist() for b in itertools.islice(random_batches(50, 8, seed, step), k)]

    drawn = first(0, 20)
    assert drawn == first(0, 20)  # a resumed run draws the same batches
    assert drawn != first(0, 40) and drawn != first(1, 20)
    assert all(len(set(b)) == 8 and all(0 <= i < 50 for i in b) for b in drawn)
    assert len({tuple(b) for b in drawn}) == 5
