"""What a Tracker row needs beyond the eigenvalues when the model is sharded by FSDP2: the
alignment of the step with v₁ from this process's shards of both, summed over processes
(the 2-process runs themselves are tests/integrations/test_lightning.py's FSDP2 test and
tests/fsdp_spectra.py's Tracker loop)."""

from __future__ import annotations

import pytest
import torch

from sharpcli.hessian.sharpness import alignment
from sharpcli.linalg.shard import ShardedSpace


def test_alignment_of_shards_summed_over_processes_is_that_of_the_whole_vectors():
    gen = torch.Generator().manual_seed(0)
    d, v = torch.randn(9, generator=gen, dtype=torch.float64), torch.randn(9, generator=gen, dtype=torch.float64)
    cut = 4  # "process 0" holds d[:4], v[:4]; the other process's sums arrive through sum_
    rest = {1: (d[cut:] @ v[cut:]).reshape(1),  # an inner product
            2: torch.stack([d[cut:].norm() ** 2, v[cut:].norm() ** 2])}  # squared norms
    space = ShardedSpace(lambda t: t + rest[t.numel()].to(t.dtype), torch.device("cpu"))
    sharded = alignment(d[:cut], v[:cut], space)
    whole = float((d @ v).abs() / (d.norm() * v.norm()))
    assert sharded == pytest.approx(whole, rel=1e-14)
    assert alignment(d[:cut], v[:cut]) != pytest.approx(whole, rel=1e-3)  # the sum matters
    assert alignment(d, v) == pytest.approx(whole, rel=1e-14)
