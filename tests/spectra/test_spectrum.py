"""sharpcli.spectra.compute and the pyhessian backend against dense Hessians of small models."""

import copy
import math

import pytest
import torch

from sharpcli.errors import Interrupted, SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import DenseOperator, lanczos, matrix_with_spectrum
from sharpcli.hessian.losses import mse_loss
from sharpcli.hessian.params import named_param_groups
from sharpcli.spectra.pyhessian import _pairs, pyhessian_eigenvalues, pyhessian_trace
from sharpcli.linalg import lanczos_top_k
from sharpcli.spectra.compute import compute_spectrum
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.problem import Problem
from tests.cases import BN_MSE, MLP_CE, MLP_MSE
from tests.helpers import dense_hessian


def _problem(case, n=40, dtype=torch.float64, chunk_size=4096, should_stop=None, **sizes):
    """A Problem of a shared case on n examples, the model built with `sizes`."""
    return Problem(*case(n=n, dtype=dtype, **sizes), chunk_size=chunk_size,
                   should_stop=should_stop)


def _dense(problem):
    """The Hessian in float64 of the model's weights as they are (float32 or not)."""
    model = copy.deepcopy(problem.model).double()
    return dense_hessian(model, problem.loss_fn, problem.x.double(), problem.y)


def _rows(problem, **cfg):
    """The spectrum.csv rows of every solve, as `sharp spectrum` writes them."""
    return [r for solve in compute_spectrum(problem, SpectrumConfig(**cfg))
            for r in solve.rows(problem.checkpoint, problem.step)]


def _values(rows, quantity="eigenvalue", block="all"):
    return torch.tensor([r.value for r in rows if r.quantity == quantity and r.block == block],
                        dtype=torch.float64)


# --- native -------------------------------------------------------------------------------

def test_lanczos_top_k_matches_dense_eigenvalues_in_float32():
    problem = _problem(MLP_MSE, dtype=torch.float32)
    truth = torch.linalg.eigvalsh(_dense(problem)).flip(0)
    rows = _rows(problem, top_k=8, tol=1e-5, max_iter=200)
    assert [r.index for r in rows] == list(range(1, 9))
    assert all(r.converged for r in rows)
    assert len({(r.n_hvp, r.seconds) for r in rows}) == 1  # the whole solve, on every row
    # float32 products carry relative errors ~1e-7 of ‖H‖; we see ~1e-7 relative here
    assert torch.allclose(_values(rows), truth[:8], rtol=1e-4, atol=0)
    for r, lam in zip(rows, truth):
        assert r.residual <= 1e-5 * float(truth[0]) * 1.01


def test_power_iteration_matches_dense_top_eigenvalue():
    problem = _problem(MLP_CE)
    truth = torch.linalg.eigvalsh(_dense(problem))
    assert truth[-1] > -truth[0]  # power iteration finds the largest |λ|: make it λ₁
    rows = _rows(problem, top_k=1, method="power", tol=1e-10, max_iter=2000)
    assert rows[0].value == pytest.approx(float(truth[-1]), rel=1e-6)


def test_repeated_eigenvalues_are_found_with_their_multiplicity():
    op = DenseOperator(matrix_with_spectrum([5, 5, 5, 3, 1, 0.5, 0.2, -1, -2, -4]))
    assert lanczos(op, 4, tol=1e-10).eigenvalues.tolist() != pytest.approx([5, 5, 5, 3])
    res = lanczos_top_k(op, 4, tol=1e-10)
    assert res.eigenvalues.tolist() == pytest.approx([5, 5, 5, 3], abs=1e-8)
    assert (res.residuals < 1e-8).all() and res.converged.all()


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors_of_dense_trace(method):
    problem = _problem(MLP_MSE, dtype=torch.float32)
    truth = float(torch.trace(_dense(problem)))
    (row,) = [r for r in _rows(problem, top_k=1, trace=True, trace_probes=60, trace_method=method)
              if r.quantity == "trace"]
    assert row.index == 0 and row.n_hvp == 60 and row.converged is None
    assert 0 < row.residual < 0.2 * abs(truth)
    assert abs(row.value - truth) <= 3 * row.residual


def test_density_integrates_to_one_and_sits_at_dense_eigenvalues():
    problem = _problem(MLP_MSE, n=30, hidden=4)  # 63 parameters
    truth = torch.linalg.eigvalsh(_dense(problem))
    out = list(compute_spectrum(problem, SpectrumConfig(top_k=1, density=True, density_runs=10,
                                                        density_iters=100, density_grid=4000,
                                                        density_sigma=0.002)))
    density = out[-1]
    (summary,), curve = density.rows("", None), density.curve("", None)
    t = torch.tensor([c["eigenvalue"] for c in curve], dtype=torch.float64)
    d = torch.tensor([c["density"] for c in curve], dtype=torch.float64)
    assert (d >= 0).all() and float(torch.trapezoid(d, t)) == pytest.approx(1, abs=1e-9)
    # with as many Lanczos steps as parameters the nodes are the eigenvalues: the mass lies
    # within a few smoothing widths of them
    width = 0.002 * float(truth[-1] - truth[0])
    near = (t[:, None] - truth[None, :]).abs().min(dim=1).values <= 4 * width
    assert float(torch.trapezoid(d * near, t)) > 0.999
    # the density's mean times n is the trace (Hutchinson over the SLQ probes)
    assert summary.quantity == "density" and summary.n_hvp == 10 * 63
    assert abs(summary.value - float(truth.sum())) <= 3 * summary.residual


def test_per_layer_blocks_match_dense_sub_blocks():
    # MSE: the output layer's block repeats each eigenvalue once per class
    problem = _problem(MLP_MSE, dtype=torch.float32)
    dense = _dense(problem)
    rows = _rows(problem, top_k=6, tol=1e-6, max_iter=200, per_layer=True)
    start = 0
    for name, params in named_param_groups(problem.model).items():
        n = sum(p.numel() for p in params)
        block = dense[start:start + n, start:start + n]
        start += n
        truth = torch.linalg.eigvalsh(block).flip(0)[:6]
        assert torch.allclose(_values(rows, block=name), truth, atol=1e-4 * float(truth[0]), rtol=0), name
    assert start == dense.shape[0]
    head = _values(rows, block="4").tolist()  # three copies of each value, all found
    assert head[:3] == pytest.approx([head[0]] * 3, rel=1e-4) and head[3] < head[0] * (1 - 1e-3)


def test_small_block_gives_all_its_eigenvalues_and_top_k_above_size_is_an_error():
    problem = _problem(BN_MSE, dtype=torch.float32)  # BatchNorm block: 12 parameters
    rows = _rows(problem, top_k=15, per_layer=True, max_iter=100)
    assert len(_values(rows, block="1")) == 12 and len(_values(rows)) == 15
    with pytest.raises(SharpError, match="top_k 100 is more than the model's 69 parameters"):
        _rows(problem, top_k=100, max_iter=200)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batchnorm_modes_and_the_model_is_left_as_found(mode):
    problem = _problem(BN_MSE, n=24, chunk_size=24)
    model = problem.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    truth = torch.linalg.eigvalsh(HessianOperator(model, mse_loss, problem.x, problem.y,
                                                  mode=mode).dense()).flip(0)[:3]
    rows = _rows(problem, top_k=3, tol=1e-8, max_iter=69, hessian_mode=mode)
    assert torch.allclose(_values(rows), truth, rtol=1e-7)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    other = "train" if mode == "eval" else "eval"
    assert not torch.allclose(_values(_rows(problem, top_k=3, tol=1e-8, max_iter=69,
                                            hessian_mode=other)), truth, rtol=1e-3)


def test_should_stop_interrupts_within_one_product():
    calls = []
    problem = _problem(MLP_MSE, should_stop=lambda: calls.append(1) or len(calls) > 5)
    with pytest.raises(Interrupted):
        _rows(problem, top_k=3, tol=1e-12, max_iter=100)
    assert len(calls) == 6


# --- the pyhessian backend ----------------------------------------------------------------

def test_pyhessian_lambda1_agrees_with_native_within_its_tolerance():
    problem = _problem(MLP_CE)
    truth = torch.linalg.eigvalsh(_dense(problem)).flip(0)
    tol = 1e-4
    ph = pyhessian_eigenvalues(problem, 1, tol=tol, max_iter=1000, seed=0)
    native = _values(_rows(problem, top_k=1, tol=1e-8, max_iter=200))
    assert float(native[0]) == pytest.approx(float(truth[0]), rel=1e-10)
    # power iteration stops when λ changes by < tol relative; the error left is about that
    # change over 1 − (λ₂/λ₁)², the rate at which the Rayleigh quotient converges
    rho = float(truth[1] / truth[0])
    assert bool(ph.converged[0])
    assert abs(float(ph.eigenvalues[0]) - float(native[0])) <= tol / (1 - rho**2) * float(native[0])
    # its residual is that of the vector whose Rayleigh quotient it returned: an eigenvalue
    # lies within it (and it is no larger than the vector distance allows)
    assert abs(float(ph.eigenvalues[0]) - float(truth[0])) <= float(ph.residuals[0])


def test_pyhessian_trace_within_three_standard_errors():
    problem = _problem(MLP_MSE)
    truth = float(torch.trace(_dense(problem)))
    tr = pyhessian_trace(problem, 50, seed=3)
    assert tr.n_probes == 50 and tr.n_matvec == 50
    assert abs(tr.estimate - truth) <= 3 * tr.stderr


@pytest.mark.parametrize("chunk_size", [40, 15])  # its cached-gradient path, its loader path
def test_pyhessian_counts_every_product(monkeypatch, chunk_size):
    problem = _problem(MLP_MSE, chunk_size=chunk_size)
    grads = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or original(*a, **k))
    res = pyhessian_eigenvalues(problem, 2, tol=0.0, max_iter=7)  # tol 0: never converges
    assert res.n_matvec == 14 and not res.converged.any()
    chunks = math.ceil(40 / chunk_size)
    assert len(grads) == (14 * chunks if chunks > 1 else 14)
    assert torch.allclose(res.eigenvalues, res.eigenvalues.sort(descending=True).values)


def test_pyhessian_leaves_model_rng_and_dtype_as_found():
    problem = _problem(BN_MSE, n=24)
    model = problem.model
    model.train()
    model[4].eval()  # a mixed state, restored module by module
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    pyhessian_eigenvalues(problem, 2, max_iter=20)
    pyhessian_trace(problem, 5)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_default_dtype() == torch.float32


def test_pyhessian_measures_what_native_eval_mode_measures():
    problem = _problem(BN_MSE, n=24)
    problem.model.train()
    native = _values(_rows(problem, top_k=1, tol=1e-9, max_iter=69))
    ph = pyhessian_eigenvalues(problem, 1, tol=1e-9, max_iter=3000)
    assert float(ph.eigenvalues[0]) == pytest.approx(float(native[0]), rel=1e-5)


@pytest.mark.parametrize("flags,words", [
    ({"per_layer": True}, "per_layer"), ({"density": True}, "torch.eig"),
    ({"method": "lanczos"}, "power iteration only"), ({"trace_method": "hutch++"}, "hutch++"),
    ({"hessian_mode": "train"}, "eval mode")])
def test_pyhessian_refuses_what_it_lacks(flags, words):
    # the library names the arguments; the CLI says them as flags (tests/cli/test_names.py)
    with pytest.raises(SharpError, match="backend pyhessian cannot do") as err:
        SpectrumConfig(backend="pyhessian", **flags).validate()
    assert words in str(err.value) and "\n" not in str(err.value)


def test_replay_of_pyhessians_stopping_rule():
    # pair 1 converges at its 3rd product (returns the 2nd quotient); pair 2 runs out (max 3)
    quotients = [1.0, 2.0, 2.0001, 5.0, 6.0, 7.0]
    assert _pairs(quotients, 2, 1e-3, 3) == [(1, True), (5, False)]
    assert _pairs(quotients[:-1], 2, 1e-3, 3) is None


def test_no_check_missed_is_cheaper_and_can_miss_repeated_eigenvalues():
    """The MSE output layer's Hessian block is I_C ⊗ mean([h; 1][h; 1]ᵀ): each eigenvalue
    C = 3 times over. The default restarts find all three copies of the top one; a single
    Lanczos run (--no-check-missed) sees each eigenspace once, and returns the next distinct
    eigenvalues instead — fewer products, the documented risk."""
    problem = _problem(MLP_MSE, n=60, hidden=20)
    model = problem.model
    block = list(model[4].parameters())
    op = HessianOperator(model, mse_loss, problem.x, problem.y, params=block)
    truth = torch.linalg.eigvalsh(op.dense()).flip(0)
    distinct = truth[::3][:3]
    torch.testing.assert_close(truth[:3], distinct[:1].expand(3))  # the block's structure
    checked = [r for r in _rows(problem, top_k=3, per_layer=True, tol=1e-8) if r.block == "4"]
    single = [r for r in _rows(problem, top_k=3, per_layer=True, tol=1e-8, check_missed=False)
              if r.block == "4"]
    torch.testing.assert_close(torch.tensor([r.value for r in checked], dtype=torch.float64),
                               truth[:3], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(torch.tensor([r.value for r in single], dtype=torch.float64),
                               distinct, rtol=1e-7, atol=1e-9)
    assert single[0].n_hvp < checked[0].n_hvp


def test_no_check_missed_matches_dense_on_a_whole_network():
    problem = _problem(MLP_MSE)
    truth = torch.linalg.eigvalsh(_dense(problem)).flip(0)[:4]
    rows = _rows(problem, top_k=4, tol=1e-8, check_missed=False)
    torch.testing.assert_close(_values(rows), truth, rtol=1e-7, atol=1e-9)
    assert rows[0].n_hvp < _rows(problem, top_k=4, tol=1e-8)[0].n_hvp


def test_default_trace_is_gauss_newton_and_stops_at_its_tolerance():
    """On a trained network, where H − G is small (at initialisation it is not): with MSE,
    H − G is the curvature weighted by the residuals, so fitting the 40 examples (L-BFGS
    to a loss below 1e-3) leaves tr(H − G) about 1e-3 of tr H."""
    problem = _problem(MLP_MSE)
    opt = torch.optim.LBFGS(problem.model.parameters(), max_iter=100, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=0, tolerance_change=0)

    def closure():
        opt.zero_grad()
        loss = mse_loss(problem.model(problem.x), problem.y)
        loss.backward()
        return loss
    opt.step(closure)
    assert mse_loss(problem.model(problem.x), problem.y) < 1e-3
    truth = float(torch.trace(_dense(problem)))

    def trace_row(**cfg):
        (row,) = [r for r in _rows(problem, top_k=1, trace=True, **cfg) if r.quantity == "trace"]
        return row
    default = trace_row()
    assert default.n_hvp < 100 and default.residual <= 3e-3 * abs(default.value)
    assert abs(default.value - truth) <= 4 * default.residual + 1e-12
    every = trace_row(trace_tol=0, trace_probes=40)
    assert every.n_hvp == 40 and abs(every.value - truth) <= 4 * every.residual
    hutch = trace_row(trace_method="hutchinson", trace_probes=40, trace_tol=0)
    assert every.residual < 0.3 * hutch.residual  # the control variate's whole point


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_method_matches_dense_blocks_and_counts_the_output_copies(dtype):
    """--method block per layer: every block's top 6 against the dense sub-block; the MSE
    output layer repeats each eigenvalue once per class, and blocks of 6 find every copy."""
    problem = _problem(MLP_MSE, dtype=dtype)
    dense = _dense(problem)
    tol = {torch.float64: 1e-9, torch.float32: 1e-6}[dtype]
    rows = _rows(problem, top_k=6, tol=tol, max_iter=200, per_layer=True, method="block")
    start = 0
    for name, params in named_param_groups(problem.model).items():
        n = sum(p.numel() for p in params)
        truth = torch.linalg.eigvalsh(dense[start:start + n, start:start + n]).flip(0)[:6]
        start += n
        assert torch.allclose(_values(rows, block=name), truth, atol=50 * tol * float(truth[0]),
                              rtol=0), name
    head = _values(rows, block="4").tolist()
    assert head[:3] == pytest.approx([head[0]] * 3, rel=1e-5) and head[3] < head[0] * (1 - 1e-3)
    assert all(r.converged for r in rows)


@pytest.mark.parametrize("method", ["lanczos", "block"])
def test_warm_start_from_a_nearby_checkpoint_gives_the_cold_answer(method):
    """The next checkpoint of a run: the same model a few small steps on. Starting from the
    previous eigenvectors gives the eigenvalues a cold start gives, in fewer products."""
    problem = _problem(MLP_MSE, dtype=torch.float64)
    cfg = SpectrumConfig(top_k=4, tol=1e-8, max_iter=155, method=method)
    warm: dict = {}
    list(compute_spectrum(problem, cfg, warm))
    assert warm["all"].shape == (155, 4)
    loss = problem.loss_fn(problem.model(problem.x), problem.y)  # a small GD step
    grads = torch.autograd.grad(loss, list(problem.model.parameters()))
    with torch.no_grad():
        for p, g in zip(problem.model.parameters(), grads):
            p -= 0.01 * g
    truth = torch.linalg.eigvalsh(_dense(problem)).flip(0)[:4]
    cold = next(compute_spectrum(problem, cfg))
    hot = next(compute_spectrum(problem, cfg, warm))
    assert torch.allclose(hot.result.eigenvalues, truth, rtol=1e-7)
    assert torch.allclose(hot.result.eigenvalues, cold.result.eigenvalues, rtol=1e-7)
    assert hot.n_hvp < cold.n_hvp, (hot.n_hvp, cold.n_hvp)
