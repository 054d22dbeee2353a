"""`sharp spectrum --data MODULE:CALLABLE`: a source of dict batches from the user's code,
its weighting by --num-terms against a dense Hessian, and each bad source as one line with
exit 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests import token_cases as tc
from tests.helpers import dense_hessian_of
from tests.runners import assert_one_line_error, sharp

FACTORY = ["--model-factory", "tests.token_cases:model"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "w.pt"
    torch.save(tc.model().state_dict(), path)
    return path


def flags(weights, data="stream", *more):
    return ["spectrum", *FACTORY, "--weights", weights, "--data", f"tests.token_cases:{data}",
            "--loss", "tests.token_cases:token_loss", "--num-terms", "tests.token_cases:tokens",
            *more, "--quiet", "--out", weights.parent / "s.csv"]


def test_a_stream_of_dict_batches_weighted_by_tokens(weights):
    sharp(*flags(weights, "stream", "--top-k", "2", "--tol", "1e-10")).ok()
    model = tc.model()
    ids, mask, labels = tc.sequences()
    h = dense_hessian_of(model, lambda out: tc.token_loss(out, labels), ids=ids, mask=mask)
    got = pd.read_csv(weights.parent / "s.csv")["value"].to_numpy()
    truth = torch.linalg.eigvalsh(h).flip(0)[:2].numpy()
    assert abs(got - truth).max() <= 1e-8 * abs(truth).max()


@pytest.mark.parametrize("data, more, words", [
    ("empty", [], ["--data yields no batches"]),
    ("noisy", [], ["--data gives different batches on two passes", "--no-check-deterministic"]),
    ("tensors_only", [], ["not an (inputs, targets) pair", "--batch-loss"]),
    ("wrong_keys", [], ["cannot take a batch of {'tokens': Tensor(2, 5) int64}", "model(**inputs)"]),
    ("big_labels", [], ["labels outside the model's 7 outputs: 9"]),
    ("stream", ["--loss", "tests.token_cases:per_token_loss"], ["--loss must return a scalar"]),
    ("stream", ["--num-terms", "tests.token_cases:nothing"], ["--num-terms counts no loss terms"]),
    ("stream", ["--samples", "3"], ["--samples and --split apply to in-memory examples"]),
    ("stream", ["--block-size", "2"], ["--block-size applies to --method block, not --method lanczos"]),
])
def test_bad_sources_are_one_line(weights, data, more, words):
    assert_one_line_error(sharp(*flags(weights, data, *more)), 2, *words)


def test_the_determinism_check_can_be_turned_off(weights):
    """The same source that is refused above is measured: a row of spectrum.csv with a
    finite eigenvalue that took products (a refusal, or a crash after the check, writes none)."""
    out = weights.parent / "s.csv"
    out.unlink(missing_ok=True)
    sharp(*flags(weights, "noisy", "--no-check-deterministic", "--top-k", "1")).ok()
    rows = pd.read_csv(out)
    assert rows[["block", "quantity", "index"]].values.tolist() == [["all", "eigenvalue", 1]]
    assert np.isfinite(rows.loc[0, "value"]) and rows.loc[0, "n_hvp"] > 0


def test_source_flags_need_a_model_factory(weights):
    assert_one_line_error(sharp("spectrum", weights, "--num-terms", "tests.token_cases:tokens",
                                "--quiet"), 2, "--num-terms", "apply with --model-factory")
