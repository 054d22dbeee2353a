"""Hutchinson and Hutch++ against exact traces."""

import math

import pytest
import torch

from sharpcli.linalg import (DenseOperator, LinalgInputError, control_variate_trace,
                             hutchinson_trace, matrix_with_spectrum)
from tests.helpers import CountingOperator as Counting


# a spectrum dominated by a few large eigenvalues, like a trained network's Hessian
LOW_RANK = torch.cat([torch.linspace(50, 100, 8), torch.linspace(-0.5, 1, 192)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_within_three_stderr(dtype, method):
    lam = torch.linspace(-2, 10, 120)
    op = Counting(matrix_with_spectrum(lam, seed=0).to(dtype))
    exact = float(lam.sum())
    for seed in range(5):
        op.calls = 0
        r = hutchinson_trace(op, n_probes=60, seed=seed, method=method)
        assert r.n_matvec == op.calls == 60
        assert r.stderr > 0 and abs(r.estimate - exact) <= 3 * r.stderr, (seed, r, exact)
    assert r.n_probes == (60 if method == "hutchinson" else 20)


def test_hutch_plus_plus_beats_hutchinson_at_equal_matvecs():
    op = DenseOperator(matrix_with_spectrum(LOW_RANK, seed=1))
    exact = float(LOW_RANK.sum())
    seeds = range(6)
    err = {m: sum(abs(hutchinson_trace(op, n_probes=30, seed=s, method=m).estimate - exact)
                  for s in seeds) / len(seeds) for m in ("hutchinson", "hutch++")}
    assert err["hutch++"] < 0.2 * err["hutchinson"], err


def test_hutch_plus_plus_is_exact_on_low_rank():
    lam = torch.zeros(80, dtype=torch.float64)
    lam[:5] = torch.tensor([9.0, 7.0, -3.0, 2.0, 1.0])
    r = hutchinson_trace(DenseOperator(matrix_with_spectrum(lam, seed=2)), n_probes=18, method="hutch++")
    assert abs(r.estimate - 16.0) < 1e-10 and r.stderr < 1e-10 and r.n_matvec == 18


def test_early_stop():
    op = Counting(matrix_with_spectrum(torch.linspace(1, 1.5, 100), seed=3))
    r = hutchinson_trace(op, n_probes=1000, tol=0.01, seed=0)
    assert 10 <= r.n_probes == r.n_matvec == op.calls < 1000
    assert r.stderr <= 0.01 * abs(r.estimate)
    assert abs(r.estimate - 125) <= 4 * r.stderr
    op.calls = 0
    pp = hutchinson_trace(op, n_probes=150, tol=1e-2, seed=0, method="hutch++")
    assert pp.n_matvec == op.calls == 100 + pp.n_probes and 10 <= pp.n_probes < 50
    assert pp.stderr <= 1e-2 * abs(pp.estimate)


def test_hutch_plus_plus_with_budget_beyond_size_is_exact():
    lam = torch.linspace(-3, 5, 20, dtype=torch.float64)
    op = Counting(matrix_with_spectrum(lam, seed=4))
    r = hutchinson_trace(op, n_probes=100, method="hutch++")
    assert abs(r.estimate - float(lam.sum())) < 1e-10 and r.stderr == 0.0
    assert r.n_matvec == op.calls == 40 and r.n_probes == 0


def test_single_probe_has_no_stderr():
    r = hutchinson_trace(DenseOperator(torch.eye(4, dtype=torch.float64)), n_probes=1)
    assert r.estimate == 4.0 and math.isnan(r.stderr)


def test_bad_arguments():
    op = DenseOperator(torch.eye(4, dtype=torch.float64))
    for kwargs in (dict(n_probes=0), dict(method="hutch"), dict(tol=0.0), dict(method="hutch++", n_probes=2)):
        with pytest.raises(ValueError):
            hutchinson_trace(op, **kwargs)


# --- control variate: tr(A) = tr(B) + E[zᵀ(A − B)z] -------------------------------------

def _pair(seed=0, scale=0.05):
    """A with a chosen spectrum, and B = A − R for a small symmetric R of chosen spectrum."""
    lam = torch.linspace(-2, 10, 100, dtype=torch.float64)
    a = matrix_with_spectrum(lam, seed=seed)
    r = matrix_with_spectrum(scale * torch.linspace(-3, 5, 100, dtype=torch.float64), seed=seed + 1)
    return a, a - r, r


def test_control_variate_with_exact_base_is_exact():
    a, _, _ = _pair()
    op = Counting(a)
    r = control_variate_trace(op, float(a.trace()), lambda z: float(z @ a @ z), n_probes=7)
    assert r.estimate == pytest.approx(float(a.trace()), rel=1e-13)
    assert r.stderr == pytest.approx(0.0, abs=1e-10)
    assert r.n_matvec == op.calls == r.n_probes == 7


def test_control_variate_is_unbiased_with_the_remainders_variance():
    a, b, rem = _pair()
    op = DenseOperator(a)
    exact = float(a.trace())
    n = 40
    ests = [control_variate_trace(op, float(b.trace()), lambda z: float(z @ b @ z),
                                  n_probes=n, seed=s) for s in range(60)]
    # Rademacher probes: Var zᵀRz = 2(‖R‖²_F − Σ R_ii²)
    sd = math.sqrt(2 * (float((rem * rem).sum()) - float((rem.diagonal() ** 2).sum())) / n)
    mean = sum(e.estimate for e in ests) / len(ests)
    assert abs(mean - exact) <= 4 * sd / math.sqrt(len(ests))
    median_se = sorted(e.stderr for e in ests)[len(ests) // 2]
    assert 0.7 * sd <= median_se <= 1.3 * sd
    # and it is far below plain Hutchinson's spread on A itself
    sd_a = math.sqrt(2 * (float((a * a).sum()) - float((a.diagonal() ** 2).sum())) / n)
    assert sd < 0.1 * sd_a


def test_control_variate_tolerance_stops_after_five_probes():
    a, b, _ = _pair(scale=1e-4)
    op = Counting(a)
    r = control_variate_trace(op, float(b.trace()), lambda z: float(z @ b @ z), n_probes=50,
                              tol=1e-3)
    assert r.n_probes == op.calls == 5
    assert abs(r.estimate - float(a.trace())) <= 1e-3 * abs(float(a.trace()))


@pytest.mark.parametrize("kwargs", [dict(n_probes=0), dict(tol=0.0), dict(base=float("nan"))])
def test_control_variate_rejects_bad_arguments(kwargs):
    a, b, _ = _pair()
    base = kwargs.pop("base", float(b.trace()))
    with pytest.raises(LinalgInputError):
        control_variate_trace(DenseOperator(a), base, lambda z: 0.0, **kwargs)


def test_samples_are_the_averaged_probe_values():
    """TraceResult.samples: zᵀAz per probe for Hutchinson, zᵀAz − zᵀBz with a control
    variate; their mean is the estimate (minus the exact part)."""
    a, b, _ = _pair()
    op = DenseOperator(a)
    h = hutchinson_trace(op, n_probes=12, seed=3)
    assert len(h.samples) == 12 and sum(h.samples) / 12 == pytest.approx(h.estimate, rel=1e-12)
    cv = control_variate_trace(op, float(b.trace()), lambda z: float(z @ b @ z), n_probes=9, seed=3)
    assert len(cv.samples) == 9
    assert float(b.trace()) + sum(cv.samples) / 9 == pytest.approx(cv.estimate, rel=1e-12)
    # the first probe, recomputed from the same seed
    z = torch.randint(0, 2, (100,), generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    assert h.samples[0] == pytest.approx(float(z @ a @ z), rel=1e-12)
    assert cv.samples[0] == pytest.approx(float(z @ (a - b) @ z), rel=1e-9)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_probes_go_through_matmat_in_blocks(method):
    """The same probes in the same order whatever the blocks: equal estimates; the first 10
    probes (and Hutch++'s sketch and tr(QᵀAQ)) in one block each."""
    op = Counting(matrix_with_spectrum(torch.linspace(0.5, 3, 100), seed=3))
    one = hutchinson_trace(op, n_probes=60, tol=0.01, seed=0, method=method)
    assert one.n_probes > 10  # the stop falls after the first block
    blocks_one = op.blocks
    op.calls, op.blocks = 0, 0
    four = hutchinson_trace(op, n_probes=60, tol=0.01, seed=0, method=method, block=4)
    assert four.n_matvec == op.calls and four.n_probes >= one.n_probes
    assert four.samples[:one.n_probes] == pytest.approx(one.samples, rel=1e-12)
    assert op.blocks < blocks_one
    sketch = 2 if method == "hutch++" else 0
    assert blocks_one == sketch + 1 + (one.n_probes - 10)  # then one product at a time


def test_control_variate_probes_in_blocks():
    a = matrix_with_spectrum(torch.linspace(0, 2, 80), seed=4)
    base = torch.diag(torch.diag(a))
    op = Counting(a)
    r = control_variate_trace(op, float(base.trace()), lambda z: float(z @ base @ z), n_probes=5,
                              seed=0)
    assert op.blocks == 1 and r.n_matvec == op.calls == 5
