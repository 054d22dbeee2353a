"""The Tracker's examples as the rest of the API names and takes them: `data` (with `y`), or
one `(x, y)` pair as the trainer callbacks take it; and `every=0`, which means never."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import sharpcli
from tests.cases import BN_MSE
from tests.runners import csv_lines, without_column


def _loop(run_dir, model, loss_fn, xs, ys, *examples, steps: int = 4, **tracker_kw):
    """A few GD steps on (xs, ys) around Tracker(model, loss_fn, *examples, **tracker_kw); the
    rows it returned."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = []
    with sharpcli.Tracker(model, loss_fn, *examples, optimizer=opt, run_dir=run_dir,
                          **tracker_kw) as tracker:
        for step in range(steps + 1):
            opt.zero_grad()
            loss_fn(model(xs), ys).backward()
            rows.append(tracker.step(step))
            if step < steps:
                opt.step()
    return rows


@pytest.mark.parametrize("form", ["pair", "keywords"])
def test_one_pair_or_data_and_y_write_the_rows_of_x_y(tmp_path, form):
    """Tracker(model, loss_fn, (x, y)) and Tracker(..., data=x, y=y) are Tracker(model,
    loss_fn, x, y): the same metrics.csv, test=(x, y) included."""
    logs = {}
    for name in ("positional", form):
        model, loss_fn, x, y = BN_MSE()
        args, kw = {"positional": ((x, y), {}), "pair": (((x, y),), {}),
                    "keywords": ((), {"data": x, "y": y})}[name]
        _loop(tmp_path / name, model, loss_fn, x, y, *args, every=2, test=(x[:8], y[:8]), **kw)
        logs[name] = without_column(csv_lines(tmp_path / name / "metrics.csv"), "seconds")
    assert len(logs["positional"]) == 4  # the header and steps 0, 2, 4
    assert logs[form] == logs["positional"]
    frame = pd.read_csv(tmp_path / form / "metrics.csv")
    assert frame["sharpness"].notna().all() and frame["test_loss"].notna().all()


def test_every_0_measures_nothing_and_never_divides_by_it(tmp_path):
    """every=0 is never (it divided by zero): no λ₁, and no evaluation unless eval_every
    asks for one; the files are written all the same."""
    model, loss_fn, x, y = BN_MSE()
    rows = _loop(tmp_path / "never", model, loss_fn, x, y, (x, y), every=0)
    assert rows == [None] * 5
    assert csv_lines(tmp_path / "never" / "metrics.csv")[1:] == []
    assert (tmp_path / "never" / "config.json").is_file()

    model, loss_fn, x, y = BN_MSE()
    rows = _loop(tmp_path / "eval", model, loss_fn, x, y, (x, y), every=0, eval_every=2)
    measured = [r for r in rows if r is not None]
    assert [r["step"] for r in measured] == [0, 2, 4]
    assert all(r.get("sharpness") is None and r["train_loss"] > 0 for r in measured)


def test_spectrum_takes_one_pair_too():
    model, loss_fn, x, y = BN_MSE()
    pair = sharpcli.spectrum(model, loss_fn, (x, y), top_k=2, seed=0)
    apart = sharpcli.spectrum(model, loss_fn, x, y, top_k=2, seed=0)
    assert [r["value"] for r in pair] == [r["value"] for r in apart] and len(pair) == 2
