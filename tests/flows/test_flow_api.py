"""`sharpcli.flow` refuses, by their Python names, the arguments it would not read; no run
is integrated (each refusal comes before the run is read)."""

from __future__ import annotations

import pytest
import torch

import sharpcli
from sharpcli.errors import SharpError
from tests.cases import MLP_MSE


@pytest.mark.parametrize("argument", ["data", "num_terms", "batch_loss", "chunk_size"])
def test_data_arguments_without_a_model_are_refused(tmp_path, argument):
    value = {"data": torch.zeros(2, 6), "num_terms": len, "batch_loss": lambda m, b: 0,
             "chunk_size": 8}[argument]
    with pytest.raises(SharpError, match=f"^{argument} is read with model="):
        sharpcli.flow(tmp_path, **{argument: value})


def test_chunk_size_with_a_stream_is_refused(tmp_path):
    model, _, x, y = MLP_MSE()
    with pytest.raises(SharpError, match="^chunk_size batches in-memory examples"):
        sharpcli.flow(tmp_path, model=model, data=[(x, y)], chunk_size=8)
