"""The covariance check's pieces: Σ = U X Uᵀ's eigenpairs for a non-orthonormal U (RMSProp's
generalized eigenvectors) against a dense eigendecomposition, and flow-sigma.csv's rows."""

import numpy as np
import torch

from sharpcli.flows.central import FlowPoint, covariance_eigenpairs
from sharpcli.flows.run import sigma_rows


def test_covariance_eigenpairs_match_a_dense_sigma():
    gen = torch.Generator().manual_seed(3)
    U = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    A = np.random.default_rng(3).normal(size=(3, 3))
    X = A @ A.T
    values, vectors = covariance_eigenpairs(U, X)
    dense = U.numpy() @ X @ U.numpy().T
    expected = np.linalg.eigvalsh(dense)[::-1][:3]
    assert np.allclose(values, expected, rtol=1e-10)
    assert np.allclose(vectors.T.numpy() @ vectors.numpy(), np.eye(3), atol=1e-12)
    for lam, v in zip(values, vectors.T.numpy()):
        assert np.allclose(dense @ v, lam * v, atol=1e-10 * expected[0])


def test_sigma_rows_project_the_displacement():
    point = FlowPoint(1.0, 1.5, [3.0, 1.0], [0.0, 0.0], 2, 0.5)
    point.sigma = [0.4, 0.1]
    point.sigma_vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    rows = sigma_rows(7, point, torch.tensor([0.5, -2.0, 9.0]))
    assert [(r["index"], r["sigma2"], r["displacement2"]) for r in rows] == [(1, 0.4, 0.25),
                                                                            (2, 0.1, 4.0)]
    assert [r["displacement2"] for r in sigma_rows(7, point, None)] == [None, None]
