"""Hugging Face end to end: a GPT2LMHeadModel on a DataLoader of padded dict batches, its own
token-mean loss, against a dense float64 Hessian of the same objective over all sequences at
once — through sharpcli.spectrum, the Tracker and `sharp spectrum --data MODULE:CALLABLE`."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import sharpcli
from tests import hf_case
from tests.helpers import dense_hessian_of
from tests.runners import sharp


@pytest.fixture(scope="module")
def truth():
    model = hf_case.make_model()
    h = dense_hessian_of(model, lambda out: out.loss, **hf_case.sequences())
    return torch.linalg.eigvalsh(h).flip(0), float(h.trace())


@pytest.mark.parametrize("batch_size", [1, 3, hf_case.N])
def test_top_eigenvalues_equal_the_dense_hessian_however_batched(truth, batch_size):
    rows = sharpcli.spectrum(hf_case.make_model(), None, hf_case.loader(batch_size),
                             batch_loss="model", num_terms=hf_case.shifted_tokens, top_k=3,
                             tol=1e-10)
    torch.testing.assert_close(torch.tensor([r["value"] for r in rows], dtype=torch.float64),
                               truth[0][:3], rtol=1e-6, atol=1e-9)


def test_trace_equals_the_dense_hessians(truth):
    rows = sharpcli.spectrum(hf_case.make_model(), None, hf_case.loader(hf_case.N),
                             batch_loss="model", num_terms=hf_case.shifted_tokens, top_k=1,
                             trace=True, trace_method="hutch++",
                             trace_probes=3 * 256)  # a sketch of the whole space: exact
    trace = [r for r in rows if r["quantity"] == "trace"][0]
    assert trace["value"] == pytest.approx(truth[1], rel=1e-6)


def test_a_loss_of_the_outputs_with_pairs_gives_the_same(truth):
    """(inputs, targets) pairs and a loss of the ModelOutput's logits, shifted by hand."""
    import torch.nn.functional as F

    def shifted_ce(outputs, labels):
        return F.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())

    pairs = [({k: v for k, v in b.items() if k != "labels"}, b["labels"])
             for b in hf_case.loader(2)]
    rows = sharpcli.spectrum(hf_case.make_model(), shifted_ce, pairs, top_k=2, tol=1e-10,
                             num_terms=lambda b: int((b[1][:, 1:] != -100).sum()))
    torch.testing.assert_close(torch.tensor([r["value"] for r in rows], dtype=torch.float64),
                               truth[0][:2], rtol=1e-6, atol=1e-9)


def test_tracker_rows_in_a_training_loop(tmp_path):
    model = hf_case.make_model()
    batch = hf_case.sequences()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with sharpcli.Tracker(model, None, hf_case.loader(3), batch_loss="model",
                          num_terms=hf_case.shifted_tokens, optimizer=opt,
                          run_dir=tmp_path / "run", every=2, tol=1e-10) as tracker:
        for step in range(3):
            opt.zero_grad()
            model(**batch).loss.backward()
            row = tracker.step(step)
            if row is not None:
                h = dense_hessian_of(model, lambda out: out.loss, **batch)
                assert row["sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)
                # Hugging Face computes its loss in float32 (logits.float()): agreement to 1e-6
                assert row["train_loss"] == pytest.approx(float(model(**batch).loss.detach()), rel=1e-6)
            opt.step()
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(logged["step"]) == [0, 2] and logged["train_acc"].isna().all()


def test_sharp_spectrum_with_a_data_callable(truth, tmp_path):
    weights = tmp_path / "gpt2.pt"
    torch.save(hf_case.make_model().state_dict(), weights)
    out = tmp_path / "spectrum.csv"
    sharp("spectrum", "--model-factory", "tests.hf_case:make_model", "--weights", weights,
          "--data", "tests.hf_case:loader", "--num-terms", "tests.hf_case:shifted_tokens",
          "--loss", "model", "--top-k", "3", "--tol", "1e-10", "--out", out, "--quiet").ok()
    values = pd.read_csv(out)["value"].to_numpy()
    torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), truth[0][:3],
                               rtol=1e-6, atol=1e-9)
