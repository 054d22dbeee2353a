"""Hessian-vector products by finite differences of the gradient (finite_difference.py): on
one process against the dense Hessian, and on models sharded by FSDP2 over 2 and 4 gloo
processes against one unsharded process's exact (double-backward) spectrum.

Accuracy stated: float64 eigenvalues to 1e-7 relative (measured ~1e-11 on the MLP, ~1e-8 on
the GPT-2); float32 to 2e-4 relative, what the central difference allows at the step rule
(measured ≤ 7e-5 on the top Rayleigh quotient of the GPT-2, benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import sharpcli
from sharpcli.cli.names import cli_message
from sharpcli.errors import SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.finite_difference import (STEP_SCALE, ParamLayout, is_fsdp2,
                                                resolve_hvp)
from sharpcli.linalg.results import make_generator
from sharpcli.workload.weights import load_sharded_weights
from tests import hf_case, token_cases
from tests.fsdp_spectra import (EVERY, EXAMPLES, HUTCH_PP, HUTCHINSON, ROW_PROBES, SEED, SHARP,
                                SLQ, STEPS, factory_csv)
from tests.runners import sharp
from tests.cases import CNN_MSE, MLP_CE, MLP_MSE
from tests.helpers import dense_hessian

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "fsdp_spectra.py"
LAUNCH_TIMEOUT = 600  # seconds, a whole launch of 4 cases (4 processes on 2 cores: slow)
ACCURACY = {"float64": 1e-7, "float32": 2e-4}


@pytest.mark.parametrize("order, rel64, rel32", [(2, 1e-8, 3e-3), (4, 1e-10, 1e-3)])
@pytest.mark.parametrize("case", [MLP_MSE, MLP_CE], ids=lambda c: c.name)
def test_finite_difference_product_against_the_dense_hessian(case, order, rel64, rel32):
    for dtype, rel in ((torch.float64, rel64), (torch.float32, rel32)):
        model, loss_fn, x, y = case(dtype=dtype)
        h = dense_hessian(model, loss_fn, x, y).double()
        op = HessianOperator(model, loss_fn, x, y, hvp="finite-difference", chunk_size=7)
        op._fd.order, op._fd.scale = order, STEP_SCALE[order]
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=dtype)
        exact = h @ v.double()
        error = float((op.matvec(v).double() - exact).norm() / exact.norm())
        assert error < rel, (dtype, error)
        assert error > 0  # a difference quotient, not the exact product under another name


def test_a_product_leaves_weights_gradients_and_generators_exactly_as_found():
    model, loss_fn, x, y = MLP_CE()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(model, loss_fn, x, y, hvp="finite-difference")
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rng = torch.get_rng_state()
    op.matvec(v)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(bool((p.grad == 3).all()) for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_spectrum_with_finite_differences_on_one_process():
    """hvp="finite-difference" on an unsharded model: the exact spectrum to 1e-8 in float64,
    and the note says how the products were made."""
    model, loss_fn, x, y = MLP_CE()
    exact = sharpcli.spectrum(model, loss_fn, x, y, top_k=3, tol=1e-8, hvp="exact")
    fd = sharpcli.spectrum(model, loss_fn, x, y, top_k=3, tol=1e-8, hvp="finite-difference")
    for e, f in zip(exact, fd):
        assert f["value"] == pytest.approx(e["value"], rel=1e-8)
    assert "central finite differences of the gradient" in fd[0]["note"]
    assert "estimated relative error 2e-10" in fd[0]["note"]
    assert not exact[0]["note"]


def test_auto_is_exact_for_an_unsharded_model_and_a_bad_hvp_is_refused():
    model, loss_fn, x, y = MLP_CE()
    assert not is_fsdp2(model) and resolve_hvp("auto", model) == "exact"
    with pytest.raises(SharpError, match="hvp must be one of auto, exact, finite-difference"):
        sharpcli.spectrum(model, loss_fn, x, y, hvp="fd")


def test_third_derivatives_need_an_exact_product():
    model, loss_fn, x, y = CNN_MSE()
    op = HessianOperator(model, loss_fn, x, y, hvp="finite-difference")
    with pytest.raises(ValueError, match="third derivatives need an exact product"):
        op.third_derivative(torch.ones(op.size, dtype=torch.float64),
                            torch.ones(op.size, dtype=torch.float64))


def exact_spectra() -> dict:
    """One unsharded process, double backward: the cases of tests/fsdp_spectra.py."""
    out = {}
    for dtype in (torch.float64, torch.float32):
        name = str(dtype)[6:]
        model, loss_fn, x, y = MLP_CE(dtype=dtype)
        out[f"mlp-{name}"] = sharpcli.spectrum(model, loss_fn, x, y, top_k=2, tol=1e-8,
                                               hvp="exact")
        out[f"gpt2-{name}"] = sharpcli.spectrum(
            hf_case.make_model().to(dtype), None, hf_case.loader(2),
            batch_loss=hf_case.token_loss, num_terms=hf_case.shifted_tokens, top_k=2, tol=1e-8,
            hvp="exact")
    return out


@pytest.fixture(scope="module")
def exact():
    return exact_spectra()


def check_estimates(sharded: dict, world: int) -> None:
    """The sharded MLP's trace and density (tests/fsdp_spectra.py `estimates`) against the
    dense float64 Hessian of one unsharded process with the same probes: each process's part
    of a probe is its shard of the whole probe that ParamLayout.random draws, so one process
    drawing with the same seed has the whole probes. Each probe's zᵀHz, Hutch++'s sketch and
    remainder, and each SLQ run's first two moments (Σwθ = zᵀHz/n, Σwθ² = ‖Hz‖²/n, exact
    for any run of 2 steps or more) to 1e-7, what the finite differences allow in float64."""
    model, loss_fn, x, y = MLP_CE(dtype=torch.float64)
    h = dense_hessian(model, loss_fn, x, y)
    n = len(h)
    layout = ParamLayout(list(model.parameters()))

    def probes(count):
        gen = make_generator(SEED, torch.device("cpu"))
        return torch.stack([layout.random(gen, "rademacher", torch.float64, torch.device("cpu"))
                            for _ in range(count)], dim=1)

    z = probes(HUTCH_PP)
    forms = ((h @ z) * z).sum(0)
    value, stderr, samples, products = sharded["hutchinson"]
    assert samples == pytest.approx(forms[:HUTCHINSON].tolist(), rel=1e-7, abs=1e-9)
    assert value == pytest.approx(float(forms[:HUTCHINSON].mean()), rel=1e-7)
    assert products == HUTCHINSON and abs(value - float(h.trace())) < 4 * stderr
    s = HUTCH_PP // 3  # Hutch++: a sketch of s probes, then the remainder's probes
    q = torch.linalg.qr(h @ z[:, :s])[0]
    rest = z[:, s:HUTCH_PP - s] - q @ (q.T @ z[:, s:HUTCH_PP - s])
    plus = float((q * (h @ q)).sum() + ((h @ rest) * rest).sum(0).mean())
    assert sharded["hutch++"] == [pytest.approx(plus, rel=1e-7), HUTCH_PP]
    nodes, weights = (torch.tensor(sharded[key], dtype=torch.float64)
                      for key in ("nodes", "weights"))
    z = probes(SLQ["runs"])
    assert (weights * nodes).sum(1).tolist() == pytest.approx((((h @ z) * z).sum(0) / n).tolist(), rel=1e-7)
    assert (weights * nodes ** 2).sum(1).tolist() == pytest.approx(((h @ z).pow(2).sum(0) / n).tolist(),
                                                                   rel=1e-7)
    assert weights.sum(1).tolist() == pytest.approx([1.0] * SLQ["runs"], abs=1e-12)
    assert sharded["integral"] == pytest.approx(1.0, abs=1e-12)
    eigenvalues = torch.linalg.eigvalsh(h)
    assert float(nodes.max()) == pytest.approx(float(eigenvalues[-1]), rel=1e-6)
    assert float(nodes.min()) >= float(eigenvalues[0]) - 1e-6
    trace_row, density_row = sharded["rows"]
    assert trace_row["value"] == pytest.approx(float(forms[:ROW_PROBES].mean()), rel=1e-7)
    assert density_row["quantity"] == "density"
    for row in sharded["rows"]:
        assert "finite differences" in row["note"], row
        assert f"probes sharded like the parameters over {world} processes" in row["note"], row


def check_command_estimates(rows: pd.DataFrame, density: pd.DataFrame) -> None:
    """`sharp spectrum --fsdp factory --trace --density` (FACTORY_EXTRA): the trace row is the
    mean of zᵀHz over its 4 probes, H applied exactly by one unsharded process to the whole
    probes that the shards were cut from; the density row's implied trace is n·zᵀHz/‖z‖²
    of the first probe (1 run), and density.csv's curve integrates to 1."""
    model = token_cases.model()
    op = sharpcli.hessian(model, token_cases.token_loss, token_cases.stream(),
                          num_terms=token_cases.tokens)
    gen = make_generator(0, torch.device("cpu"))  # --seed's default
    layout = ParamLayout(list(model.parameters()))
    z = torch.stack([layout.random(gen, "rademacher", torch.float64, torch.device("cpu"))
                     for _ in range(4)], dim=1)
    forms = ((op @ z) * z).sum(0)
    trace_row = rows[rows["quantity"] == "trace"].iloc[0]
    assert trace_row["value"] == pytest.approx(float(forms.mean()), rel=1e-7)
    assert trace_row["n_hvp"] == 4
    density_row = rows[rows["quantity"] == "density"].iloc[0]
    assert density_row["value"] == pytest.approx(float(forms[0]), rel=1e-7)
    curve = torch.tensor(density["density"].to_numpy())
    grid = torch.tensor(density["eigenvalue"].to_numpy())
    assert float(torch.trapezoid(curve, grid)) == pytest.approx(1.0, abs=1e-6)


def check_tracked(tracked: dict, run_dir: Path) -> None:
    """The Tracker in a plain FSDP2 training loop (tests/fsdp_spectra.py `train`): at each
    measured step, rank 0's λ₁, λ₂, ‖g‖, alignment and train loss are one unsharded
    process's at the same weights (dense Hessian, exact gradient), λ to 1e-7; training ended
    with the weights it ends with without the Tracker, bit for bit; and the Tracker's top
    vectors were each process's shards, not whole vectors."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    top = pd.read_csv(run_dir / "top_eigenvalues.csv")
    assert tracked["unchanged"]
    assert list(metrics["step"]) == list(range(0, STEPS + 1, EVERY))
    for _, row in metrics.iterrows():
        model, loss_fn, x, y = MLP_CE(n=EXAMPLES)
        with torch.no_grad():
            for p, w in zip(model.parameters(), tracked["weights"][str(int(row["step"]))]):
                p.copy_(torch.tensor(w, dtype=torch.float64))
        values, vectors = torch.linalg.eigh(dense_hessian(model, loss_fn, x, y))
        loss = loss_fn(model(x), y)
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
        second = top[(top["step"] == row["step"]) & (top["index"] == 2)]["eigenvalue"]
        assert row["sharpness"] == pytest.approx(float(values[-1]), rel=1e-7)
        assert float(second.iloc[0]) == pytest.approx(float(values[-2]), rel=1e-7)
        assert row["sharpness_converged"] == 1
        assert row["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-10)
        cosine = abs(float(grad @ vectors[:, -1])) / float(grad.norm())
        assert row["alignment"] == pytest.approx(cosine, abs=1e-6)
        assert row["train_loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    assert 0 < tracked["local"] < sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_fsdp2_sharded_spectra_equal_one_unsharded_process(world, exact, tmp_path):
    """An MLP and a tiny GPT-2, sharded per layer or block then at the root, the data split
    unevenly over the processes (some hold fewer batches, on 4 one holds none of the GPT-2's):
    the top eigenvalues of one exact process, to ACCURACY; every process's weights,
    gradients and (in-memory data) generator exactly as found."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    out, weights, csv = tmp_path / "spectra.json", tmp_path / "tokens.pt", tmp_path / "fsdp.csv"
    torch.save(token_cases.model().state_dict(), weights)
    cli = [str(weights), str(csv)] if world == 2 else []
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", str(world), str(SCRIPT), str(out), *cli],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = json.loads(out.read_text())
    if cli:  # `sharp spectrum --fsdp Linear` and `--fsdp factory` under torchrun: one process's
        assert sharded.pop("cli_exit") == [0, 0]
        assert sharp(*SHARP, "--weights", str(weights), "--out", str(tmp_path / "one.csv")).code == 0
        one = pd.read_csv(tmp_path / "one.csv")
        for path in (csv, factory_csv(str(csv))):
            two = pd.read_csv(path)
            values = two[two["quantity"] == "eigenvalue"]["value"]
            assert list(values) == pytest.approx(list(one["value"]), rel=1e-7), path
            assert two["note"].str.contains("finite differences").all()
            assert two["note"].str.contains("sharded like the parameters over 2").all()
        check_command_estimates(pd.read_csv(factory_csv(str(csv))),
                                pd.read_csv(factory_csv(str(csv), "density")))
    check_estimates(sharded.pop("estimates"), world)
    check_tracked(sharded.pop("tracked"), tmp_path / "tracked-run")
    assert set(sharded) == set(exact)
    for case, rows in sharded.items():
        dtype = case.split("-")[1]
        values = [r["value"] for r in rows["rows"]]
        assert values == pytest.approx([r["value"] for r in exact[case]], rel=ACCURACY[dtype]), case
        assert all(f"sharded like the parameters over {world} processes" in r["note"]
                   and "finite differences" in r["note"] for r in rows["rows"]), case
        kept = rows["kept"]
        assert kept["weights"] and kept["gradients"], case
        if case.startswith("mlp"):  # a DataLoader draws from the generator on each pass
            assert kept["rng"], case


def test_the_guides_tracker_loop_is_the_tested_script():
    """The large-models guide's FSDP2 loop is not run by the snippet tests (it needs
    torchrun), but every line of it is a line of tests/fsdp_spectra.py, which runs it."""
    from tests.docs.snippets import ROOT, blocks

    block = next(b for b in blocks(ROOT / "docs" / "guides" / "large-models.md")
                 if b.first_line.startswith("for layer in model:"))

    def code(line):  # without indentation and comment
        return line.split("#", 1)[0].strip()
    script = {code(line) for line in SCRIPT.read_text().splitlines()}
    missing = [line for line in block.code.splitlines() if code(line) not in script]
    assert not missing, missing


@pytest.mark.parametrize("flags, words", [
    (["--fsdp", "Conv2d"], "--fsdp Conv2d: no module of class Conv2d in the model"),
    (["--fsdp", "Linear"], "--fsdp shards the model over torchrun's processes"),
    (["--fsdp", " , "], "--fsdp needs module class names"),
    (["--fsdp", "factory"], "--fsdp shards the model over torchrun's processes"),
])
def test_fsdp_flag_errors_are_one_line(flags, words, tmp_path):
    torch.save(token_cases.model().state_dict(), tmp_path / "tokens.pt")
    result = sharp(*SHARP, "--weights", str(tmp_path / "tokens.pt"), *flags,
                   "--out", str(tmp_path / "x.csv"))
    assert result.code == 2 and len(result.error_lines) == 1 and words in result.stderr, \
        result.stderr


@pytest.mark.parametrize("option, words", [
    (dict(checkpoint_every=2), "checkpoint_every: the Tracker's checkpoints are one process's"),
    (dict(batch_sharpness=4), "batch_sharpness needs exact Hessian-vector products"),
])
def test_the_tracker_refuses_what_a_sharded_model_cannot_have(option, words, tmp_path,
                                                               monkeypatch):
    """Refused before anything runs (a sharded model needs torchrun: here the test says the
    model is one; the launch of test_fsdp2_sharded_spectra_equal_one_unsharded_process runs
    the Tracker on a real one)."""
    import sharpcli.training.tracker as tracker

    monkeypatch.setattr(tracker, "is_fsdp2", lambda model: True)
    model, loss_fn, x, y = MLP_CE()
    with pytest.raises(SharpError, match=words):
        sharpcli.Tracker(model, loss_fn, x, y, run_dir=tmp_path / "run", **option)
    assert not (tmp_path / "run").exists()


def test_fsdp_factory_refuses_a_model_the_factory_did_not_shard():
    with pytest.raises(SharpError) as err:
        load_sharded_weights(token_cases.model(), token_cases.model().state_dict(), "w.pt")
    assert str(err.value).startswith("fsdp=factory: the model_factory model is not sharded")
    assert cli_message(err.value).startswith("--fsdp factory: the --model-factory model is not")


def test_fsdp_flag_needs_a_model_factory(tmp_path):
    torch.save(token_cases.model().state_dict(), tmp_path / "step-1.pt")
    result = sharp("spectrum", str(tmp_path / "step-1.pt"), "--fsdp", "Linear")
    assert result.code == 2 and "--fsdp apply with --model-factory" in result.stderr
