"""The faster integrator (Rayleigh–Ritz refreshes at the substeps after a step's first, one
warm-started block Lanczos per step) against the full solve at every substep, on a tiny
full-batch GD run that reaches the edge: the same flow to the eigensolver's accuracy."""

import numpy as np
import pytest

from sharpcli.flows.central import FlowSettings, FlowState, integrate
from sharpcli.flows.config import FlowConfig
from sharpcli.flows.run import gd_weights, open_run
from tests.runners import sharp, train_args

LR = 0.6
STEPS = 20  # a checkpoint step: the flows end where GD's weights are known


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    root = tmp_path_factory.mktemp("faster")
    sharp(*train_args(root, "gd", "--width", 16, "--steps", 30, "--lr", LR,
                      "--checkpoint-every", 10)).ok()
    run = open_run(root / "reports" / "gd", FlowConfig())
    out, w0 = {}, run.objective.weights()  # the objective's model moves with the flows
    for refresh in (True, False):
        state = FlowState(w0.clone())
        settings = FlowSettings(lr=LR, substeps=2, refresh=refresh)
        points = [c for _, c, _ in integrate(run.objective, settings, STEPS, state,
                                             FlowState(w0.clone()))]
        out[refresh] = (points, state.weights.clone())
    return run, out


def test_refreshes_agree_with_full_solves(flows):
    run, out = flows
    (fast, w_fast), (full, w_full) = out[True], out[False]
    held = [t for t, p in enumerate(full) if p.critical > 0]
    assert len(held) >= 3 and [p.critical for p in fast] == [p.critical for p in full]
    for a, b in zip(fast, full):
        assert a.sharpness == pytest.approx(b.sharpness, rel=2e-3)
        assert a.predicted_loss == pytest.approx(b.predicted_loss, rel=2e-3)
        assert a.sigma_trace == pytest.approx(b.sigma_trace, rel=0.05, abs=1e-6)
    # the two flows' weights differ far less than either from GD's
    gd = gd_weights(run, 20)
    assert gd is not None
    gap = float((w_fast - w_full).norm())
    assert gap < 0.05 * float((w_full - gd).norm())
    # fewer Hessian-vector products: one solve a step instead of one a substep
    assert sum(p.n_hvp for p in fast) < 0.9 * sum(p.n_hvp for p in full)
    assert np.median([p.residuals[0] for p in fast]) < 1e-2 * LR ** -1
